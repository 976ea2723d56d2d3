"""Fetching a batch: full batches under load, low latency when traffic is light.

``Consumer.consume(n, timeout)`` waits until it has ``n`` records or the timeout
expires, so at low rates every record would wait the whole timeout. Instead: take what
is already fetched at once; if nothing is, wait for the first record (``poll``), then
take the records fetched with it, and, with ``SENTINEL_BATCH_LINGER_MS``, wait that long
for the ones right behind it.

The linger is 0 by default: a fetch brings the broker's records in chunks, and the
batch takes the whole chunk anyway; waiting for the next one added up to the linger to
every verdict's latency at a steady 10,000 events/s (``bench/stream_throughput.py``).
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def next_batch(consumer: Consumer, batch_max: int, timeout: float, linger: float) -> list[Message]:
    msgs = consumer.consume(batch_max, 0)
    if msgs:
        return msgs
    first = consumer.poll(timeout)
    if first is None:
        return []
    if batch_max == 1:
        return [first]
    return [first, *consumer.consume(batch_max - 1, linger)]
