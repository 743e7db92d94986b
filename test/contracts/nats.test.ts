import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, describe, inject, test } from "vitest";
import { NatsBus } from "../../src/backends/nats/index.js";
import { busContract } from "../../src/testing.js";

/** NatsBus passes the bus contract on a real nats-server, core and JetStream, from `{ servers }` and from a connection of the user's. */
const servers = inject("natsUrl");
const clients: NatsConnection[] = [];
afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
});

async function client(): Promise<NatsConnection> {
  const nc = await connect({ servers, maxReconnectAttempts: -1 });
  clients.push(nc);
  return nc;
}

describe.each([
  ["core NATS", false],
  ["JetStream", { storage: "memory" as const }],
])("NatsBus, %s", (_name, jetstream) => {
  busContract(() => new NatsBus({ servers, jetstream }), { describe, test, name: "from { servers }: the Bus contract" });
  busContract(async () => new NatsBus({ client: await client(), jetstream }), { describe, test, name: "from { client }: the Bus contract" });
});
