import { describe, inject, test } from "vitest";
import { Producer } from "@platformatic/kafka";
import { busContract } from "../../src/testing.js";
import { KafkaBus } from "../../src/backends/kafka/index.js";
import { PATIENT } from "../support/patient.js";
import { afterAll } from "vitest";

/** KafkaBus passes the bus contract on a real Kafka broker (KRaft), with `{ brokers }` and with a given Producer. */
const broker = inject("kafkaBroker");

describe("KafkaBus with { brokers }", () => {
  busContract(() => new KafkaBus({ brokers: [broker], ...PATIENT }), { describe, test, name: "KafkaBus: the Bus contract" });
});

describe("KafkaBus with { client: Producer }", () => {
  const producers: Producer[] = [];
  afterAll(async () => {
    await Promise.all(producers.map((p) => p.close()));
  });
  busContract(
    () => {
      const client = new Producer({ clientId: "contract", bootstrapBrokers: [broker] });
      producers.push(client);
      return new KafkaBus({ client, ...PATIENT });
    },
    { describe, test, name: "KafkaBus: the Bus contract" },
  );
});
