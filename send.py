"""Send one message to the queue "hello": the producer of RabbitMQ tutorial one.

    python send.py                 sends 'Hello World!'
    python send.py some text       sends 'some text'

The broker is localhost as guest unless AMQP_URL names another one, e.g.
AMQP_URL=amqp://user:password@host:5672/vhost
"""

import os
import sys

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
message = " ".join(sys.argv[1:]) or "Hello World!"

connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
channel = connection.channel()

# Durable quorum queue: RabbitMQ 4.3 refuses the non-durable queue of the original text.
channel.queue_declare(queue="hello", durable=True, arguments={"x-queue-type": "quorum"})

channel.basic_publish(
    exchange="",
    routing_key="hello",
    body=message.encode(),
    properties=pika.BasicProperties(
        content_type="text/plain", delivery_mode=pika.DeliveryMode.Persistent
    ),
)
print(f" [x] Sent {message!r}")
connection.close()
