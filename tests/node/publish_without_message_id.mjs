// Publishes stdin's bytes as one message without a message_id, with publisher confirms:
// node publish_without_message_id.mjs AMQP_URL EXCHANGE ROUTING_KEY < body
import amqp from "amqplib";
import { readFileSync } from "node:fs";

const [url, exchange, routingKey] = process.argv.slice(2);
const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel();
channel.publish(exchange, routingKey, readFileSync(0), {
  persistent: true,
  contentType: "application/json",
});
await channel.waitForConfirms();
await connection.close();
