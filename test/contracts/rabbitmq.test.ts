import { Connection } from "rabbitmq-client";
import { afterAll, describe, inject, test } from "vitest";
import { RabbitMQBus } from "../../src/backends/rabbitmq/index.js";
import { busContract } from "../../src/testing.js";

/** RabbitMQBus passes the bus contract on a real rabbitmq-server, from `{ url }` and from a `Connection` of the user's. */
const url = inject("rabbitmqUrl");
const clients: Connection[] = [];
afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
});

busContract(() => new RabbitMQBus({ url }), { describe, test, name: "RabbitMQBus from { url }: the Bus contract" });
busContract(
  () => {
    const client = new Connection({ url });
    client.on("error", () => {});
    clients.push(client);
    return new RabbitMQBus({ client });
  },
  { describe, test, name: "RabbitMQBus from { client }: the Bus contract" },
);
