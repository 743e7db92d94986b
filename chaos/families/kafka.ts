/** Kafka in the chaos run: KafkaBus ("kafka") on one broker (KRaft), reached through a relay so that its connections can be cut. */
import { KafkaBus } from "../../src/backends/kafka/index.js";
import { KafkaServer } from "../../test/support/kafka-server.js";
import { processFaults, type ChaosFamily, type ChaosServer } from "../families.js";

async function start(): Promise<ChaosServer> {
  const server = await KafkaServer.start({ cuttable: true });
  return {
    // The workers bootstrap through the relay: everything they open stays behind it.
    url: server.relayBrokers.join(","),
    // restart: with its log, as a crashed broker whose disk survived (readers catch up).
    ...processFaults(server),
    // Kafka has no command that closes a client's connection: the relay drops them all at once
    // (the buses' readers and publishers alike); they reconnect at once.
    cutListeners: async () => {
      server.relay!.cut();
      server.relay!.mend();
    },
  };
}

export const kafka: ChaosFamily = {
  start,
  buses: {
    kafka: (url, s) => new KafkaBus({ brokers: url.split(","), heartbeat: s.heartbeat }),
  },
};
