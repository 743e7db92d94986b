/**
 * `layercache/kafka`: an invalidation bus on a Kafka topic, with `@platformatic/kafka` (an optional
 * peer dependency: npm install @platformatic/kafka).
 */
export { KafkaBus, KAFKA_MAX_MESSAGE_BYTES, type KafkaBusOptions } from "./bus.js";
