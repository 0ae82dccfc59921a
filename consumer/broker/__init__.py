"""RabbitMQ: the consumer's client, its deliveries, the message headers, what they share.

Modules: `client` (the Broker the consumer runs on), `deliveries` (the aiormq fast path and
acks), `headers` (x-error and friends, no I/O), `amqp` (error translation, connecting,
copying, shared with the publisher and the dead-letter replay).
Import them by name: the package imports none, so that reading `headers` loads no client.
"""
