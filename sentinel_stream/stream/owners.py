"""Which member owns a route, so that any member's HTTP door can ask the one that knows.

A route's model lives with the member that owns the input partition its events land
on. Kafka Streams answers a query for a key the same way (interactive queries): members
advertise their HTTP address in the group's metadata, and the partition of a key is the
producers' partitioner applied to it. Here the address rides in each member's
``client.id`` (``sentinel-stream|<instance>|<url>``), read back with the admin API's
group description every few seconds, and the partition is Kafka's own partitioner
(``SENTINEL_PARTITIONER``: Java clients' murmur2 by default, or librdkafka's CRC32). The
Kafka loop checks the partitioner against the partitions routes really arrive on and
counts every disagreement (``sentinel_route_partition_mismatches_total``).
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from sentinel_stream.config import Settings

log = structlog.get_logger("sentinel_stream.owners")

CLIENT_ID_PREFIX = "sentinel-stream"
REFRESH_S = 2.0
"""How often the group's membership is read again."""
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


def client_id(instance: str, url: str) -> str:
    return f"{CLIENT_ID_PREFIX}|{instance}|{url}"


@dataclass(frozen=True, slots=True)
class Owner:
    instance: str
    url: str


class RouteOwners:
    """Partition -> owning member, refreshed in the background; routes -> partitions."""

    def __init__(self, settings: Settings, admin: AdminClient, instance: str) -> None:
        self._admin = admin
        self._group = settings.group_id
        self._topic = settings.input_topic
        self._partitioner = settings.partitioner
        self._instance = instance
        self._owners: dict[int, Owner] = {}
        self._partitions = 0
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="route-owners", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

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
        if owner is None or owner.instance == self._instance:
            return None
        return owner.url

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except (KafkaException, ValueError, RuntimeError) as exc:
                log.info("route_owners_unknown", error=str(exc))
            self._stop.wait(REFRESH_S)

    def refresh(self, timeout: float = 5.0) -> None:
        metadata = self._admin.list_topics(self._topic, timeout=timeout)
        topic = metadata.topics.get(self._topic)
        if topic is not None and topic.error is None:
            self._partitions = len(topic.partitions)
        future = self._admin.describe_consumer_groups([self._group], request_timeout=timeout)
        description = future[self._group].result(timeout=timeout)
        owners: dict[int, Owner] = {}
        for member in description.members:
            parts = (member.client_id or "").split("|", 2)
            if len(parts) != 3 or parts[0] != CLIENT_ID_PREFIX:
                continue
            assignment = member.assignment.topic_partitions if member.assignment else []
            for tp in assignment:
                if tp.topic == self._topic:
                    owners[tp.partition] = Owner(parts[1], parts[2])
        self._owners = owners
