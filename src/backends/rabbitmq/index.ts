/**
 * `layercache/rabbitmq`: an invalidation bus on RabbitMQ (a fanout exchange per cache prefix),
 * with `rabbitmq-client` (an optional peer dependency: install it to use this subpath).
 */
export { RabbitMQBus, type RabbitMQBusOptions } from "./bus.js";
