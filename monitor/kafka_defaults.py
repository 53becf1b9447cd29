"""Client settings shared by every Kafka client `monitor` creates."""

#: How long a client constructor waits for the first broker answer. kafka-python's default (30 s)
#: would keep a stop request waiting; the service retries with its own backoff instead.
BOOTSTRAP_TIMEOUT_MS = 5000
