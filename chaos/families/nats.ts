/** NATS in the chaos run: NatsBus on core NATS ("nats") or JetStream ("nats-jetstream") on one nats-server -js; the L2 comes from another family. */
import { NatsBus } from "../../src/backends/nats/index.js";
import { NatsServer } from "../../test/support/nats-server.js";
import { processFaults, type ChaosFamily, type ChaosServer } from "../families.js";

async function start(): Promise<ChaosServer> {
  const server = await NatsServer.start();
  // No listener cut: nats-server 2.9 has no command to close one client's connection (a kill and
  // restart of the server covers the loss of every connection).
  return {
    url: server.url,
    ...processFaults(server),
  };
}

export const nats: ChaosFamily = {
  start,
  buses: {
    nats: (url, s) => new NatsBus({ servers: url, heartbeat: s.heartbeat }),
    // File storage: the stream survives the server's restarts, so the buses catch up across them.
    "nats-jetstream": (url, s) => new NatsBus({ servers: url, heartbeat: s.heartbeat, jetstream: { storage: "file" } }),
  },
};
