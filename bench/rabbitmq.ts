/**
 * `npm run bench:rabbitmq [-- --quick]`: scenario 6 on RabbitMQBus beside the raw rabbitmq-client
 * floor, on a rabbitmq-server this script starts (test/support) and stops. Writes docs/benchmarks/rabbitmq.json.
 */
import { RabbitMQServer } from "../test/support/rabbitmq-server.js";
import { benchOut, busBench } from "./bus-bench.js";

const server = await RabbitMQServer.start();
try {
  await busBench("RabbitMQ (rabbitmq-server 3.10 on loopback)", [{ kind: "rabbitmq", url: server.url, name: "RabbitMQBus", floor: "rabbitmq-client: confirmed publish to a fanout exchange, exclusive queue" }], benchOut("rabbitmq"));
} finally {
  await server.stop();
}
