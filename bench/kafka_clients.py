"""Which Kafka client the reference service uses: aiokafka against confluent-kafka, on the bundled broker.

Both clients do what the Saga does, on a private Tansu broker (memory storage, loopback):

* **publish**: N messages with ``acks=all``, each awaited before the next (the outbox relay marks a row
  PUBLISHED only once the broker has it);
* **consume**: one group member reads them back and commits each offset after its message (what a
  consumer does after its handler's commit).

It prints messages per second and the CPU per message (µs), of the client process and of the broker
apart. Then, per consumer session timeout, how long a group member waits for its first records: on
joining, and on joining after the previous member stopped (a restarted service). confluent-kafka is not a
dependency; run it with

    uv run --with confluent-kafka python bench/kafka_clients.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.kafka_broker import EmbeddedKafka  # noqa: E402


def _topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run() -> None:
        a = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await a.start()
        try:
            await a.create_topics([NewTopic(name, 3, 1)])
        finally:
            await a.close()

    asyncio.run(run())


def aiokafka_publish(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0)
        await p.start()
        try:
            for i in range(n):
                await p.send_and_wait(topic, b'{"type":"UsePointCommand","payload":{}}', key=f"outbox:{i}".encode())
        finally:
            await p.stop()

    asyncio.run(run())


def aiokafka_consume(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaConsumer

    async def run() -> None:
        c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-g",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=100,
        )
        await c.start()
        got = 0
        try:
            while got < n:
                for tp, records in (await c.getmany(timeout_ms=1000, max_records=100)).items():
                    for r in records:
                        await c.commit({tp: r.offset + 1})
                        got += 1
        finally:
            await c.stop()

    asyncio.run(run())


def confluent_publish(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False, "linger.ms": 0})
    for i in range(n):
        p.produce(topic, b'{"type":"UsePointCommand","payload":{}}', key=f"outbox:{i}".encode())
        p.flush(10)


def confluent_consume(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-g",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 120
    try:
        while got < n and time.monotonic() < deadline:
            for m in c.consume(100, 1.0):
                if m.error():
                    continue
                c.commit(message=m, asynchronous=False)
                got += 1
    finally:
        c.close()


def join_times(bootstrap: str, session_ms: int) -> tuple[float, float]:
    """(s to the first records of a new group, s to the first records after that member stopped)."""
    from aiokafka import AIOKafkaConsumer

    topic = f"bench.join{session_ms}"
    _topic(bootstrap, topic)
    aiokafka_publish(bootstrap, topic, 3)

    async def first_records() -> float:
        t0 = time.monotonic()
        c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-g",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 6),
        )
        await c.start()
        try:
            while not await c.getmany(timeout_ms=100) and time.monotonic() - t0 < 120:
                pass
            return time.monotonic() - t0
        finally:
            await c.stop()

    return asyncio.run(first_records()), asyncio.run(first_records())


def measure(fn, bootstrap: str, topic: str, n: int, broker: psutil.Process) -> tuple[float, float, float]:
    """(messages/s, client CPU µs per message, broker CPU µs per message)."""
    me = psutil.Process(os.getpid())
    c0, b0, t0 = me.cpu_times(), broker.cpu_times(), time.perf_counter()
    fn(bootstrap, topic, n)
    wall = time.perf_counter() - t0
    c1, b1 = me.cpu_times(), broker.cpu_times()
    client = (c1.user + c1.system - c0.user - c0.system) * 1e6 / n
    brk = (b1.user + b1.system - b0.user - b0.system) * 1e6 / n
    return n / wall, client, brk


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    args = ap.parse_args(argv)
    clients = [("aiokafka", aiokafka_publish, aiokafka_consume)]
    try:
        import confluent_kafka  # noqa: F401

        clients.append(("confluent-kafka", confluent_publish, confluent_consume))
    except ImportError:
        print("confluent-kafka not installed: run with `uv run --with confluent-kafka …` to compare")
    b = EmbeddedKafka().start()
    try:
        broker = psutil.Process(b.proc.pid)
        print(f"{args.messages:,} messages, 3 partitions, Tansu (memory) on {b.bootstrap}\n")
        print("| client | publish, each awaited (acks=all) | consume + commit each |")
        print("|---|---|---|")
        for name, pub, con in clients:
            topic = f"bench.{name.replace('-', '_')}"
            _topic(b.bootstrap, topic)
            p = measure(pub, b.bootstrap, topic, args.messages, broker)
            c = measure(con, b.bootstrap, topic, args.messages, broker)
            print(
                f"| {name} | {p[0]:,.0f} msg/s, client {p[1]:.0f} µs CPU/msg, broker {p[2]:.0f} µs "
                f"| {c[0]:,.0f} msg/s, client {c[1]:.0f} µs CPU/msg, broker {c[2]:.0f} µs |"
            )
        print("\n| session timeout | first records after joining | … after the previous member stopped |")
        print("|---|---|---|")
        for ms in (10_000, 6_000, 3_000):
            first, again = join_times(b.bootstrap, ms)
            print(f"| {ms / 1000:g} s | {first:.1f} s | {again:.1f} s |")
    finally:
        b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
