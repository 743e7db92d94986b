import { describe, inject, test } from "vitest";
import { busContract, l2StoreContract } from "../../src/testing.js";
import { PG_KINDS, contractBackends, pairedBuses } from "../support/postgres-clients.js";

/** PostgresStore and PostgresBus pass the contract suites on a real PostgreSQL, given a pg.Pool or connection settings. */
const url = inject("postgresUrl");

describe.each(PG_KINDS)("PostgreSQL with %s", (kind) => {
  const backends = contractBackends(kind, url);
  l2StoreContract(backends.store, { describe, test, name: "PostgresStore: the L2Store contract" });
  busContract(backends.bus, { describe, test, name: "PostgresBus: the Bus contract" });
});

describe("PostgreSQL, the bus paired with a store", () => {
  busContract(pairedBuses(url), { describe, test, name: "PostgresBus({ store }): the Bus contract" });
});
