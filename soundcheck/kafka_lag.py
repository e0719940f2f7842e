"""Consumer lag read the Kafka way: a group's committed offsets against the log-end offsets.

Works against any Kafka-protocol broker (the local Tansu, MSK, a team's own cluster) through the admin
API, per group, topic and partition, as Kafka's own ``kafka-consumer-groups --describe`` does:

* ``lag = log-end offset − committed offset`` (a partition the group never committed counts from the
  log-start offset, since the plan's consumers start at ``earliest``);
* ``age_s`` = now − the timestamp of the first record not yet committed (read with one fetch of that
  single record), where the broker keeps record timestamps; None where it does not.

Which topics a group consumes comes from the profile (``metrics.kafka.groups``) or, when not given, from
the group's member assignments (Kafka's DescribeGroups) and the topics it has committed on. Tansu answers
DescribeGroups without assignments and refuses an OffsetFetch for "all topics", so the partitions are
always named explicitly here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int  # −1: the group has never committed on this partition
    end: int
    lag: int
    age_s: float | None  # None: no record timestamps, or nothing behind


def _client_kwargs(bootstrap: str, security_protocol: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"bootstrap_servers": bootstrap, "request_timeout_ms": 10_000}
    if security_protocol == "SSL":
        kw["security_protocol"] = "SSL"
        kw["ssl_context"] = ssl.create_default_context()
    return kw


class GroupLagReader:
    """Reads lag for groups on one cluster; keeps its admin client and one plain consumer between reads.

    The consumer has no group: it only looks up offsets and fetches the single record at a committed
    offset, so reading lag never joins, and never rebalances, the groups it watches.
    """

    def __init__(self, bootstrap: str, *, security_protocol: str = "PLAINTEXT"):
        self.bootstrap = bootstrap
        self.security_protocol = security_protocol
        self._admin: Any = None
        self._consumer: Any = None

    async def _clients(self) -> tuple[Any, Any]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            kw = _client_kwargs(self.bootstrap, self.security_protocol)
            admin = AIOKafkaAdminClient(**kw)
            await admin.start()
            consumer = AIOKafkaConsumer(**kw, enable_auto_commit=False, group_id=None)
            try:
                await consumer.start()
            except BaseException:
                await admin.close()
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def admin(self) -> Any:
        """The reader's admin client (started on first use), for callers that need one on the same cluster."""
        return (await self._clients())[0]

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def groups(self) -> list[str]:
        admin, _ = await self._clients()
        return sorted(g for g, protocol in await admin.list_consumer_groups() if protocol in ("consumer", ""))

    async def partitions(self, topics: list[str]) -> list[Any]:
        from aiokafka import TopicPartition

        if not topics:
            return []
        admin, _ = await self._clients()
        out = []
        for t in await admin.describe_topics(topics):
            name = t.get("topic", t.get("name"))
            for p in t.get("partitions", []):
                out.append(TopicPartition(name, p.get("partition", p.get("partition_index"))))
        return sorted(out)

    async def _assigned_topics(self, group: str) -> set[str]:
        """Topics in the group's member assignments (empty where the broker does not report them)."""
        from aiokafka.protocol.group import MemberAssignment

        admin, _ = await self._clients()
        out: set[str] = set()
        with contextlib.suppress(Exception):
            for response in await admin.describe_consumer_groups([group]):
                for g in response.groups:
                    for member in g[5]:
                        raw = member[4]
                        if raw:
                            out |= {t for t, _parts in MemberAssignment.decode(raw).assignment}
        return out

    async def read(self, groups: dict[str, list[str]] | None = None) -> list[PartitionLag]:
        """Lag of every partition of each group's topics; `groups` maps group → topics (empty list or
        None: discover). Topics that do not exist (yet) count nothing."""
        admin, consumer = await self._clients()
        wanted = groups if groups else dict.fromkeys(await self.groups(), [])
        all_topics = {t for t in await admin.list_topics() if not t.startswith("__")}
        out: list[PartitionLag] = []
        for group, topics in wanted.items():
            tps = await self.partitions([t for t in topics if t in all_topics] if topics else sorted(all_topics))
            committed = await admin.list_consumer_group_offsets(group, partitions=tps) if tps else {}
            if not topics:
                mine = await self._assigned_topics(group) | {
                    tp.topic for tp, om in committed.items() if om is not None and om.offset >= 0
                }
                tps = [tp for tp in tps if tp.topic in mine]
            if not tps:
                continue
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                om = committed.get(tp)
                c = om.offset if om is not None and om.offset is not None else -1
                first = c if c >= 0 else starts.get(tp, 0)
                lag = max(0, ends[tp] - first)
                age = await self._age(tp, first) if lag else None
                out.append(PartitionLag(group, tp.topic, tp.partition, c, ends[tp], lag, age))
        return out

    async def _age(self, tp: Any, offset: int) -> float | None:
        """Seconds since the first record not yet committed was written (one single-record fetch)."""
        _, consumer = await self._clients()
        consumer.assign([tp])
        consumer.seek(tp, offset)
        with contextlib.suppress(Exception):
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
            for records in batch.values():
                for r in records:
                    if r.timestamp and r.timestamp > 0:
                        return max(0.0, time.time() - r.timestamp / 1000.0)
        return None


def summarize(lags: list[PartitionLag]) -> dict[str, float]:
    """The campaign's lag KPIs from partition rows: total messages behind, the worst partition, and the
    age of the oldest record not yet committed (MSK's SumOffsetLag / MaxOffsetLag / EstimatedMaxTimeLag)."""
    ages = [x.age_s for x in lags if x.age_s is not None]
    return {
        "consumer_lag_messages": float(sum(x.lag for x in lags)),
        "consumer_lag_max_partition_messages": float(max((x.lag for x in lags), default=0)),
        "consumer_lag_seconds": float(max(ages, default=0.0)),
    }


class BlockingGroupLagReader:
    """`GroupLagReader` for threads without an event loop (the campaign's sampler): its own loop thread."""

    def __init__(self, bootstrap: str, *, security_protocol: str = "PLAINTEXT", timeout_s: float = 20.0):
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kafka-lag", daemon=True)
        self._thread.start()
        self._reader = GroupLagReader(bootstrap, security_protocol=security_protocol)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout_s)

    def read(self, groups: dict[str, list[str]] | None = None) -> list[PartitionLag]:
        return self._call(self._reader.read(groups))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._reader.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
