/**
 * The backends a chaos run can use, one entry per family: the coordinator starts the family's
 * server and injects faults into it; a worker builds its L2 store and bus from it. A new backend
 * family adds a file under chaos/families/ and a line in FAMILIES, L2_KINDS or BUS_KINDS below.
 */
import type { Bus, L2Store } from "../src/backend.js";

/** A server the coordinator runs for one chaos run, with the faults it can take. */
export interface ChaosServer {
  /** What the workers connect with (a URL or any text the family's factories understand). */
  readonly url: string;
  /** Kills the server process at once (SIGKILL) and waits until it is gone. */
  kill(): Promise<void>;
  /** Starts it again on the same address (state may be lost: nothing needs to persist). */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: the server hangs with its connections open. Leave out if it cannot be paused. */
  pause?(): void;
  resume?(): void;
  /** Closes, from the server's side, the connections the buses of `busKind` listen on. */
  cutListeners?(busKind: string): Promise<void>;
  /** Closes, from the server's side, the other client connections (the stores'). */
  cutClients?(): Promise<void>;
  /** Stops the server and removes what it wrote (also after a pause). */
  stop(): Promise<void>;
}

/** What every test server class offers (test/support): a process that can be killed, restarted, paused and stopped. */
export interface ServerHandle {
  kill(signal?: NodeJS.Signals): Promise<void>;
  restart(): Promise<void>;
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

/** The process faults of a chaos server, on a test server (`kill` with `killSignal`). */
export function processFaults(server: ServerHandle, killSignal: NodeJS.Signals = "SIGKILL"): Pick<ChaosServer, "kill" | "restart" | "pause" | "resume" | "stop"> {
  return {
    kill: () => server.kill(killSignal),
    restart: () => server.restart(),
    pause: () => server.pause(),
    resume: () => server.resume(),
    stop: () => server.stop(),
  };
}

/** How the chaos run guards the L2 store (short, so that faults show quickly). */
export interface StoreSettings {
  timeoutMs: number;
  circuitBreaker: { threshold: number; cooldown: string };
}

export interface BusSettings {
  heartbeat: string;
}

export interface ChaosFamily {
  /** Coordinator: starts a server of this family for a run. */
  start(): Promise<ChaosServer>;
  /** Worker (and the coordinator's final read): the L2 store on the server at `url`. */
  store?(url: string, settings: StoreSettings): L2Store | Promise<L2Store>;
  /** Worker: the buses this family offers, by bus kind (see BUS_KINDS). */
  buses?: Record<string, (url: string, settings: BusSettings) => Bus | Promise<Bus>>;
  /** Closes the connections `store` and `buses` opened in this process (after the cache closed). */
  close?(): Promise<void>;
}

/** Families, loaded only when a run uses them (a Redis-only run never loads another client library). */
export const FAMILIES: Record<string, () => Promise<ChaosFamily>> = {
  redis: async () => (await import("./families/redis.js")).redis,
  rabbitmq: async () => (await import("./families/rabbitmq.js")).rabbitmq,
  nats: async () => (await import("./families/nats.js")).nats,
  memcached: async () => (await import("./families/memcached.js")).memcached,
  postgres: async () => (await import("./families/postgres.js")).postgres,
  kafka: async () => (await import("./families/kafka.js")).kafka,
};

/** `--l2 <kind>`: the family whose store is the L2. */
export const L2_KINDS = ["redis", "memcached", "postgres"] as const;
export type L2Kind = (typeof L2_KINDS)[number];

/** `--bus <kind>`: the family that runs it. */
export const BUS_KINDS = {
  pubsub: "redis",
  streams: "redis",
  postgres: "postgres",
  kafka: "kafka",
  rabbitmq: "rabbitmq",
  nats: "nats",
  "nats-jetstream": "nats",
} as const satisfies Record<string, keyof typeof FAMILIES>;
export type BusKind = keyof typeof BUS_KINDS;

/**
 * Sabotage "no-cas": the same store with the generation check of load write-backs dropped (every
 * write-back replaces the record, as in a store without compare-and-set).
 */
export function careless(store: L2Store): L2Store {
  return {
    connect: store.connect?.bind(store),
    get: (key) => store.get(key),
    getMany: store.getMany?.bind(store),
    set: (key, record, ttlMs) => store.set(key, record, ttlMs),
    close: store.close?.bind(store),
    resilience: store.resilience,
    limits: store.limits,
    connection: store.connection,
  };
}
