/**
 * `layercache/nats`: an invalidation bus on NATS — core subjects, or a JetStream stream that
 * instances catch up on after a gap — with the official client (`@nats-io/transport-node`, and
 * `@nats-io/jetstream` for JetStream; optional peer dependencies).
 */
export { NatsBus, type NatsBusOptions, type NatsJetStreamOptions } from "./bus.js";
