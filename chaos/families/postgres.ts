/** PostgreSQL in the chaos run: PostgresStore ("--l2 postgres") and PostgresBus ("--bus postgres") on one server. */
import pg from "pg";
import { PostgresBus, PostgresStore } from "../../src/backends/postgres/index.js";
import { PostgresServer } from "../../test/support/postgres-server.js";
import { processFaults, type ChaosFamily, type ChaosServer } from "../families.js";

/** Sessions are named, so that a fault can cut the buses' or the stores' alone. */
const BUS_APP = "layercache-chaos-bus";
const STORE_APP = "layercache-chaos-store";

/** One pool per worker process for its store (as a user would pass theirs in). */
let pool: pg.Pool | undefined;
function poolFor(url: string): pg.Pool {
  if (!pool) {
    pool = new pg.Pool({ connectionString: url, application_name: STORE_APP, max: 4 });
    pool.on("error", () => {});
  }
  return pool;
}

async function start(): Promise<ChaosServer> {
  const server = await PostgresServer.start();
  const admin = new pg.Pool({ connectionString: server.url, max: 1 });
  admin.on("error", () => {});
  const terminate = (app: string) => admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [app]).then(() => {}, () => {});
  return {
    url: server.url,
    // An immediate shutdown (SIGQUIT): the postmaster and every backend go at once, as in a crash
    // (SIGKILL of the postmaster alone would leave its backends holding the shared memory, and the
    // restart would refuse to start). The UNLOGGED table comes back empty.
    ...processFaults(server, "SIGQUIT"),
    cutListeners: () => terminate(BUS_APP),
    cutClients: () => terminate(STORE_APP),
    stop: async () => {
      await admin.end().catch(() => {});
      await server.stop();
    },
  };
}

/** The store of this worker, when its L2 is PostgreSQL: the bus is paired with it (`{ store }`), as docs/postgres.md recommends. */
let store: PostgresStore | undefined;

export const postgres: ChaosFamily = {
  start,
  store: (url, s) => (store = new PostgresStore({ pool: poolFor(url), timeout: s.timeoutMs, circuitBreaker: s.circuitBreaker })),
  buses: {
    // Its messages go out on the store's write connection ("cutClients" cuts that one too); it
    // listens (and sends its heartbeat) on sessions of its own, named for "cutListeners".
    postgres: (url, s) => new PostgresBus({ ...(store ? { store } : {}), connectionString: url, application_name: BUS_APP, heartbeat: s.heartbeat }),
  },
  close: async () => {
    await pool?.end().catch(() => {});
    pool = undefined;
    store = undefined;
  },
};
