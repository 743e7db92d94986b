/** RabbitMQ in the chaos run: RabbitMQBus ("rabbitmq") on one rabbitmq-server; the L2 comes from another family. */
import { RabbitMQBus } from "../../src/backends/rabbitmq/index.js";
import { RabbitMQServer } from "../../test/support/rabbitmq-server.js";
import { processFaults, type ChaosFamily, type ChaosServer } from "../families.js";

async function start(): Promise<ChaosServer> {
  const server = await RabbitMQServer.start();
  return {
    url: server.url,
    ...processFaults(server),
    // Each bus has one connection (publisher and consumer channels): close them all from the broker.
    cutListeners: () => server.closeAllConnections(),
  };
}

export const rabbitmq: ChaosFamily = {
  start,
  // AMQP heartbeats count whole seconds: 1 s is the shortest.
  buses: { rabbitmq: (url) => new RabbitMQBus({ url, heartbeat: "1s" }) },
};
