/**
 * `npm run bench:nats [-- --quick]`: scenario 6 on NatsBus, core and JetStream, beside the raw
 * @nats-io floor of each, on a nats-server -js this script starts (test/support) and stops.
 * Writes docs/benchmarks/nats.json.
 */
import { NatsServer } from "../test/support/nats-server.js";
import { benchOut, busBench } from "./bus-bench.js";

const server = await NatsServer.start();
try {
  await busBench(
    "NATS (nats-server 2.9 -js on loopback)",
    [
      { kind: "nats", url: server.url, name: "NatsBus, core", floor: "@nats-io/transport-node: publish, subscription" },
      { kind: "nats-jetstream", url: server.url, name: "NatsBus, JetStream", floor: "@nats-io/jetstream: acknowledged publish, ordered consumer" },
    ],
    benchOut("nats"),
  );
} finally {
  await server.stop();
}
