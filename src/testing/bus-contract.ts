import type { Bus, BusConnection, BusHandlers } from "../bus/contract.js";
import { check, checkText, eventually, Opened, register, sleep, testNames, TEXTS, textOfBytes, uniqueId, type ContractCase, type ContractOptions } from "./runner.js";

export interface BusContractOptions extends ContractOptions {
  /** First part of every channel the suite uses (each test adds a unique part after it). Default `"layercache-contract"`. */
  channelPrefix?: string;
  /**
   * How long to wait, once a later message has arrived, before concluding that a message which
   * must not arrive did not. Default 200 ms.
   */
  quietMs?: number;
}

/** Makes a bus on the backend under test. Every bus it makes must reach the same server: they are the instances of a service. */
export type MakeBus = () => Bus | Promise<Bus>;

/** One connection to a channel and everything its handlers were told. */
class Peer implements BusHandlers {
  readonly received: string[] = [];
  readonly errors: unknown[] = [];
  disconnects = 0;
  reconnects = 0;
  connection!: BusConnection;
  constructor(readonly name: string) {}
  onMessage(message: string): void {
    this.received.push(message);
  }
  onDisconnect(): void {
    this.disconnects++;
  }
  onReconnect(): void {
    this.reconnects++;
  }
  onError(error: unknown): void {
    this.errors.push(error);
  }
  count(message: string): number {
    return this.received.filter((m) => m === message).length;
  }
  /** What the handlers were told, to compare before and after. */
  get calls(): string {
    return JSON.stringify([this.received.length, this.errors.length, this.disconnects, this.reconnects]);
  }
  publish(message: string): Promise<void> {
    return this.connection.publish(message);
  }
}

/** What one test opened: its connections (closed at its end) and its own channel name. */
class Fixture extends Opened<Peer> {
  readonly channel: string;
  readonly #make: MakeBus;

  constructor(make: MakeBus, channelPrefix: string) {
    super((peer) => peer.connection.close());
    this.#make = make;
    this.channel = `${channelPrefix}:${uniqueId()}`;
  }

  bus(): Promise<Bus> | Bus {
    return this.#make();
  }

  /** A connection of `bus` to `channel` (default: the test's channel). */
  async peer(name: string, bus: Bus, channel: string = this.channel): Promise<Peer> {
    const peer = new Peer(name);
    peer.connection = await bus.connect(channel, peer);
    return this.add(peer);
  }
}

/** Long enough for any backend's own headers to matter; short enough for any sane limit. */
const DEFAULT_LONG_BYTES = 64 * 1024;

/** Messages as the cache writes them, and stranger text a bus must carry all the same. */
const MESSAGES = [
  '[1,"a1b2c3","remove",["users"],["user:1","user:2"],"a1b2c3.5",1700000000000]',
  '[1,"a1b2c3","clear",["tenant-ü","键"],[],null,1700000000000,"c2lnbmF0dXJl"]',
  ...TEXTS.map(([, text]) => text),
];

function cases(make: MakeBus, options: BusContractOptions): ContractCase[] {
  const channelPrefix = options.channelPrefix ?? "layercache-contract";
  const waitMs = options.waitMs ?? 5000;
  const quietMs = options.quietMs ?? 200;
  const test = (name: string, body: (f: Fixture) => Promise<void>): ContractCase => ({
    name,
    run: () => {
      const f = new Fixture(make, channelPrefix);
      return f.around(() => body(f));
    },
  });
  /** Waits until `peer` has received `message`. */
  const arrives = (peer: Peer, message: string): Promise<void> =>
    eventually(`delivery of ${JSON.stringify(message.slice(0, 60))} to ${peer.name}`, () => peer.count(message) > 0, waitMs, () => `it received ${peer.received.length} message(s), ${peer.errors.length} error(s)${peer.errors.length ? `: ${String(peer.errors[0])}` : ""}`);

  return [
    test("a message published right after connect resolves reaches every other connection once, on the same or another Bus object", async (f) => {
      const [one, two] = [await f.bus(), await f.bus()];
      const a = await f.peer("A", one);
      const b = await f.peer("B (same Bus object as A)", one);
      const c = await f.peer("C (another Bus object)", two);
      const [m1, m2] = [`from A ${f.channel}`, `from C ${f.channel}`];
      await a.publish(m1);
      await Promise.all([arrives(b, m1), arrives(c, m1)]);
      await c.publish(m2);
      await Promise.all([arrives(a, m2), arrives(b, m2)]);
      await sleep(quietMs);
      check(b.count(m1) === 1 && c.count(m1) === 1 && a.count(m2) === 1 && b.count(m2) === 1, `each message should arrive once at each other connection: B ${JSON.stringify(b.received)}, C ${JSON.stringify(c.received)}, A ${JSON.stringify(a.received)}`);
      // The sender may hear its own message (the cache ignores it), but no more than once.
      check(a.count(m1) <= 1 && c.count(m2) <= 1, `a sender heard its own message more than once: A ${JSON.stringify(a.received)}, C ${JSON.stringify(c.received)}`);
    }),

    test("the text of a message arrives exactly as published (Unicode, quotes, newlines, up to the bus's largest message)", async (f) => {
      const [one, two] = [await f.bus(), await f.bus()];
      const a = await f.peer("A", one);
      const b = await f.peer("B", two);
      const limit = (one as { limits?: { maxMessageBytes?: number } }).limits?.maxMessageBytes;
      const longBytes = Math.min(limit ?? DEFAULT_LONG_BYTES, 1024 * 1024);
      const long = textOfBytes(`long ${f.channel} `, longBytes);
      const sent = [...MESSAGES.map((m) => `${f.channel} ${m}`), long];
      for (const m of sent) await a.publish(m);
      await Promise.all(sent.map((m) => arrives(b, m).catch(() => {})));
      // Compared without regard to order (that has a test of its own): each one arrived, intact, once.
      for (const [i, m] of sent.entries()) {
        const what = `message ${i + 1}${m === long ? ` (${longBytes} bytes)` : ""}`;
        if (b.count(m) === 0) checkText(b.received.find((r) => !sent.includes(r)), m, `${what} did not arrive intact; the closest that arrived`);
        check(b.count(m) === 1, `${what} arrived ${b.count(m)} times`);
      }
      check(b.received.length === sent.length, `B received ${b.received.length} messages for the ${sent.length} published`);
    }),

    test("the messages of each publisher arrive in the order it published them, while another publishes too", async (f) => {
      const [one, two, three] = [await f.bus(), await f.bus(), await f.bus()];
      const a = await f.peer("A", one);
      const b = await f.peer("B", two);
      const c = await f.peer("C", three);
      const n = 100;
      const run = async (peer: Peer, tag: string): Promise<void> => {
        for (let i = 0; i < n; i++) await peer.publish(`${tag} ${i}`);
      };
      await Promise.all([run(a, "A"), run(c, "C")]);
      await Promise.all([arrives(b, `A ${n - 1}`), arrives(b, `C ${n - 1}`)]);
      for (const tag of ["A", "C"]) {
        const seen = b.received.filter((m) => m.startsWith(`${tag} `));
        const expected = Array.from({ length: n }, (_, i) => `${tag} ${i}`);
        check(JSON.stringify(seen) === JSON.stringify(expected), `B should receive ${tag}'s ${n} messages once each, in order; got ${JSON.stringify(seen.slice(0, 20))}${seen.length > 20 ? "…" : ""} (${seen.length})`);
      }
    }),

    test("a connection hears only its own channel (not one whose name extends it, or holds a wildcard)", async (f) => {
      const [one, two] = [await f.bus(), await f.bus()];
      const channels = [f.channel, `${f.channel}:sub`, `${f.channel}*`, `${f.channel.slice(0, -1)}?`];
      const senders = await Promise.all(channels.map((ch, i) => f.peer(`sender on channel ${i + 1}`, one, ch)));
      const listeners = await Promise.all(channels.map((ch, i) => f.peer(`listener on channel ${i + 1}`, two, ch)));
      for (const [i, sender] of senders.entries()) await sender.publish(`on channel ${i + 1}`);
      for (const [i, listener] of listeners.entries()) await arrives(listener, `on channel ${i + 1}`);
      await sleep(quietMs);
      for (const [i, listener] of listeners.entries()) {
        check(JSON.stringify(listener.received) === JSON.stringify([`on channel ${i + 1}`]), `the listener on ${JSON.stringify(channels[i])} received ${JSON.stringify(listener.received)}`);
      }
    }),

    test("after close() resolves, a connection is told nothing more; the others still hear and publish", async (f) => {
      const [one, two, three] = [await f.bus(), await f.bus(), await f.bus()];
      const a = await f.peer("A", one);
      const b = await f.peer("B", two);
      const c = await f.peer("C", three);
      await a.publish("before");
      await arrives(b, "before");
      await f.close(b);
      const calls = b.calls;
      await a.publish("after B closed");
      await arrives(c, "after B closed");
      await c.publish("from C after B closed");
      await arrives(a, "from C after B closed");
      await sleep(quietMs);
      check(b.calls === calls, `B's handlers were called after its close() resolved: received ${JSON.stringify(b.received)}, errors ${JSON.stringify(b.errors.map(String))}, disconnects ${b.disconnects}, reconnects ${b.reconnects}`);
      // The Bus object itself stays usable: a new connection from it hears the channel.
      const again = await f.peer("B again", two);
      await a.publish("to B again");
      await arrives(again, "to B again");
    }),
  ];
}

/**
 * Registers the bus contract — what every invalidation bus must do for the cache to keep its
 * promises — as one `describe` block of tests, each on channels of its own. `makeBus` is called for
 * each Bus object a test needs (a test connects two or three of them to one channel, as instances
 * of a service would); every connection a test opens is closed at its end. What a bus does after
 * losing its server (reporting the gap with `onDisconnect`/`onReconnect`, or catching up) depends
 * on the backend and is left to its own tests.
 */
export function busContract(makeBus: MakeBus, options: BusContractOptions = {}): void {
  register("busContract", "Bus contract", makeBus, cases, options);
}

/** The names of the contract's tests (for `skip`). */
export const BUS_CONTRACT_TESTS: readonly string[] = testNames(cases);
