/** The raw floor of the Kafka benchmark: @platformatic/kafka alone, as its documentation shows it. */
import { Consumer, Producer, stringDeserializers, stringSerializers } from "@platformatic/kafka";

/** The raw client as its documentation shows it: a producer, and a consumer streaming the topic. */
export async function rawClient(brokerAddress: string, topic: string, onKey: (key: string) => void) {
  const producer = new Producer({ clientId: "bench-raw", bootstrapBrokers: [brokerAddress], serializers: stringSerializers, acks: -1 });
  const consumer = new Consumer({ clientId: "bench-raw", groupId: `bench-raw-${process.pid}-${Math.random()}`, bootstrapBrokers: [brokerAddress], deserializers: stringDeserializers, maxWaitTime: 500 });
  const joined = new Promise<void>((r) => consumer.once("consumer:group:join", () => r()));
  const stream = await consumer.consume({ topics: [topic], mode: "latest", autocommit: false });
  stream.on("data", (m: { value: string }) => onKey(m.value));
  stream.on("error", () => {});
  await joined;
  return {
    publish: (key: string) => producer.send({ messages: [{ topic, key, value: key }] }),
    close: async () => {
      await stream.close();
      await consumer.close(true);
      await producer.close();
    },
  };
}

