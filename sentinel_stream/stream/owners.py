"""Which member owns a route, so that any member's HTTP door can ask the one that knows.

A route's model lives with the member that owns the input partition its events land
on. Kafka Streams answers a query for a key the same way (interactive queries): members
advertise their HTTP address, and the partition of a key is the producers' partitioner
applied to it (``SENTINEL_PARTITIONER``: Java clients' murmur2 by default, or
librdkafka's CRC32; the Kafka loop counts every route that arrives elsewhere,
``sentinel_route_partition_mismatches_total``).

The advertisements are records on a small compacted topic (``SENTINEL_MEMBERS_TOPIC``,
one partition): every couple of seconds each member writes ``{instance, url,
partitions}`` keyed by its instance id, and reads everyone's. A member not heard from
for ``STALE_S`` is taken as gone; a graceful stop writes a tombstone. (Reading the
group's description with the admin API instead made librdkafka abort the process when
the group coordinator died mid-request: a member must not fall over when a broker does.)
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from sentinel_stream.config import Settings
from sentinel_stream.stream.kafka.clients import consumer_config, producer_config

log = structlog.get_logger("sentinel_stream.owners")

ADVERTISE_S = 2.0
"""How often a member advertises what it owns."""
STALE_S = 10.0
"""A member not heard from for this long owns nothing any more."""
CACHE_MAX = 10_000
"""Routes whose partition is remembered."""


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int, partitioner: str) -> int:
    """The partition a producer with ``partitioner`` sends ``key`` to."""
    if partitioner == "consistent_random":
        return zlib.crc32(key) % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class Owner:
    instance: str
    url: str


@dataclass(frozen=True, slots=True)
class _Advert:
    owner: Owner
    partitions: frozenset[int]
    heard: float
    """time.monotonic() when this member received it."""


class RouteOwners:
    """Partition -> owning member, from the members' advertisements; route -> partition."""

    def __init__(
        self,
        settings: Settings,
        instance: str,
        url: str,
        owned: Callable[[], frozenset[int]],
        input_partitions: int,
    ) -> None:
        self._topic = settings.members_topic
        self._partitioner = settings.partitioner
        self._me = Owner(instance, url)
        self._owned = owned
        self._partitions = input_partitions
        self._adverts: dict[str, _Advert] = {}
        self._owners: dict[int, Owner] = {}
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer = Producer(
            producer_config(settings, extra={"message.timeout.ms": str(int(STALE_S * 1000))})
        )
        self._consumer = Consumer(
            consumer_config(
                settings,
                **{
                    "group.id": f"{settings.group_id}-members-{uuid.uuid4().hex[:8]}",
                    "statistics.interval.ms": "0",
                },
            )
        )
        self._thread = threading.Thread(target=self._run, name="route-owners", daemon=True)

    def start(self) -> None:
        self._consumer.assign([TopicPartition(self._topic, 0, OFFSET_BEGINNING)])
        self._thread.start()

    def close(self) -> None:
        """Say this member is gone (a tombstone), and stop."""
        self._stop.set()
        self._thread.join(5)
        try:
            self._producer.produce(self._topic, None, self._me.instance.encode())
            self._producer.flush(2)
            self._consumer.close()
        except (KafkaException, RuntimeError, BufferError) as exc:
            log.info("members_close_failed", error=str(exc))

    def partition(self, route: str) -> int | None:
        if self._partitions == 0:
            return None
        with self._lock:
            p = self._cache.get(route)
            if p is not None:
                self._cache.move_to_end(route)
                return p
        p = partition_of(route.encode(), self._partitions, self._partitioner)
        with self._lock:
            self._cache[route] = p
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)
        return p

    def owner(self, route: str) -> Owner | None:
        """The member that owns ``route``'s partition now, if known."""
        p = self.partition(route)
        return None if p is None else self._owners.get(p)

    def url_for(self, route: str) -> str | None:
        """The owner's HTTP address, or None when this member owns the route (or nobody
        is known to): the caller answers itself then."""
        owner = self.owner(route)
        if owner is None or owner.instance == self._me.instance:
            return None
        return owner.url

    def _run(self) -> None:
        next_advert = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_advert:
                    self._advertise()
                    next_advert = now + ADVERTISE_S
                for msg in self._consumer.consume(100, 0.5):
                    if msg.error() is None:
                        self._heard(msg.key(), msg.value())
                self._producer.poll(0)
                self._settle()
            except (KafkaException, ValueError, RuntimeError, BufferError) as exc:
                log.info("members_unknown", error=str(exc))
                self._stop.wait(1.0)

    def _advertise(self) -> None:
        advert = {
            "instance": self._me.instance,
            "url": self._me.url,
            "partitions": sorted(self._owned()),
        }
        self._producer.produce(self._topic, orjson.dumps(advert), self._me.instance.encode())

    def _heard(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        instance = key.decode("utf-8", "replace")
        if value is None:
            self._adverts.pop(instance, None)
            return
        try:
            advert = orjson.loads(value)
            owner = Owner(str(advert["instance"]), str(advert["url"]))
            partitions = frozenset(int(p) for p in advert["partitions"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not ours to read
        self._adverts[instance] = _Advert(owner, partitions, time.monotonic())

    def _settle(self) -> None:
        """Partition -> owner from the fresh adverts; when two claim a partition (a
        rebalance under way), the one heard last."""
        cutoff = time.monotonic() - STALE_S
        fresh = sorted(
            (a for a in self._adverts.values() if a.heard >= cutoff), key=lambda a: a.heard
        )
        owners: dict[int, Owner] = {}
        for advert in fresh:
            for p in advert.partitions:
                owners[p] = advert.owner
        self._owners = owners
