"""RabbitMQ: the consumer's client, its deliveries, the message headers, the dead-letter hold.

Rooms: `client` (the Broker the consumer runs on), `deliveries` (the aiormq fast path and
acks), `headers` (x-error and friends, no I/O), `amqp` (error translation, connecting,
copying, shared with the publisher), `held` (holding a queue for the dead-letter tools).
"""

from consumer.broker.client import Broker
from consumer.broker.deliveries import MessageHandler, Received

__all__ = ["Broker", "MessageHandler", "Received"]
