#!/usr/bin/env python
"""How many heartbeats per second the control plane ingests on this machine.

Real parts: PostgreSQL (a scratch database, dropped at the end), a private Redis, and real
control-plane processes. Simulated hosts are Host rows with their own Ed25519 keys; their
heartbeats are real signed envelopes, published before the consumer starts, then timed from
the first message taken to the last one acked.

- ours: the batch path, ``manage.py ingest_heartbeats`` (kombu consumer, verify every beat,
  one bulk UPDATE per batch) on the ``controlplane.heartbeats`` queue;
- peer: a no-op Celery task on the real control-plane worker (prefork, 2 processes: this
  machine has 2 cores), Celery's own floor here;
- also printed: the single-task path (``controlplane.heartbeat.report`` per beat on that worker).

Each path runs ``--repeat`` times in this process; medians are printed with the load average,
hosts updated and rows added to the database per 1,000 beats (must be 0: no row per beat).

    python bench/heartbeats.py [--hosts 2000] [--beats 20000] [--repeat 3] [--consumers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--beats", type=int, default=20000, help="beats for the batch path")
    parser.add_argument(
        "--celery-beats",
        type=int,
        default=3000,
        help="messages for the peer and the single-task path (they are ~20x slower)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--consumers", type=int, default=1, help="ingest_heartbeats processes")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-single", action="store_true", help="skip the per-task path")
    args = parser.parse_args()

    from tests.support.procs import Proc, free_port, wait_port

    # A SIGTERM (timeout, Ctrl-C from a runner) still stops Redis and drops the scratch database.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))

    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    port = free_port()
    redis_proc = Proc(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        log_dir=work,
    )
    wait_port("127.0.0.1", port)
    dbname = f"corral_bench_{os.getpid()}"
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {dbname}"],
        check=True,
    )
    env = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{dbname}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "DEBUG": "1",
        "CORRAL_VAR_DIR": str(work / "var"),
        "LOG_LEVEL": "WARNING",
        "CORRAL_STARTUP_GRACE": "3600",
    }
    os.environ.update(env)
    try:
        return run(args, env, work)
    finally:
        redis_proc.stop()
        shutil.rmtree(work, ignore_errors=True)
        from django.db import connections

        connections.close_all()
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-qc",
                f"DROP DATABASE IF EXISTS {dbname}",
            ],
            check=False,
        )


def run(args: argparse.Namespace, env: dict[str, str], work: Path) -> int:
    import django

    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    django.setup()
    import redis
    from django.core.management import call_command
    from django.db import connection

    from agent.protocol import envelope, names
    from agent.protocol.messages import Heartbeat
    from config.celery import app
    from hosts.ingest import HEARTBEAT_QUEUE
    from hosts.models import Host
    from tests.support.procs import PYTHON, Proc

    call_command("migrate", verbosity=0)
    keys = [envelope.generate_key() for _ in range(min(args.hosts, 200))]
    hosts = Host.objects.bulk_create(
        [
            Host(
                name=f"sim{i:05d}",
                status="online",
                public_key=envelope.public_key_to_text(keys[i % len(keys)].public_key()),
            )
            for i in range(args.hosts)
        ]
    )
    broker = redis.Redis.from_url(env["CELERY_BROKER_URL"])
    tables = connection.introspection.django_table_names(only_existing=True)

    def count_rows() -> int:
        total = 0
        with connection.cursor() as cur:
            for table in tables:
                cur.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")  # noqa: S608
                total += cur.fetchone()[0]
        return total

    def heartbeats(base_seq: int, count: int) -> list[dict]:
        """``count`` signed beats, round robin over the hosts, seq growing per round."""
        out = []
        for i in range(count):
            h = i % len(hosts)
            out.append(
                envelope.seal(
                    keys[h % len(keys)],
                    kind=names.CP_HEARTBEAT,
                    host_id=str(hosts[h].pk),
                    payload=Heartbeat(
                        seq=base_seq + i // len(hosts),
                        sent_at=time.time(),
                        agent_version=f"bench-{base_seq}",
                        load1=0.5,
                        memory_total=8 << 30,
                        memory_available=4 << 30,
                    ),
                )
            )
        return out

    def publish(task: str, queue: str, messages: list[dict]) -> None:
        with app.producer_or_acquire() as producer:
            for message in messages:
                app.send_task(task, kwargs={"message": message}, queue=queue, producer=producer)

    def timed(queue: str, total: int, argv: list[str], processes: int) -> float:
        """Start the consumers, time from the first message taken to the last one acked."""
        procs = [
            Proc(f"{queue}-{i}-{time.monotonic_ns()}", argv, env=env, log_dir=work)
            for i in range(processes)
        ]
        try:
            while broker.llen(queue) == total:
                if not all(p.alive() for p in procs):
                    raise RuntimeError(procs[0].log())
                time.sleep(0.001)
            started = time.monotonic()
            while broker.llen(queue) > 0 or broker.hlen("unacked") > 0:
                time.sleep(0.002)
            return time.monotonic() - started
        finally:
            for p in procs:
                p.stop()

    def celery_worker() -> list[str]:
        return [
            *(PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", "controlplane"),
            *("-c", str(args.concurrency), "-l", "WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]

    consumer = [
        *(PYTHON, "manage.py", "ingest_heartbeats", "--batch-size", str(args.batch_size)),
        *("--max-wait-ms", "100"),
    ]
    results: dict[str, list[float]] = {"peer": [], "single": [], "ours": []}
    updated: dict[str, list[int]] = {"single": [], "ours": []}
    rows: dict[str, list[float]] = {"single": [], "ours": []}
    loads = [os.getloadavg()[0]]
    base = 1
    for run_no in range(1, args.repeat + 1):
        n = args.celery_beats
        publish("controlplane.bench.noop", "controlplane", [{"n": i} for i in range(n)])
        results["peer"].append(n / timed("controlplane", n, celery_worker(), 1))
        print(f"run {run_no}: peer {results['peer'][-1]:.0f} msgs/s", flush=True)
        paths = [("ours", HEARTBEAT_QUEUE, consumer, args.consumers, args.beats)]
        if not args.skip_single:
            paths.append(("single", "controlplane", celery_worker(), 1, n))
        for name, queue, argv, processes, count in paths:
            base += 1000
            beats = heartbeats(base, count)
            before = count_rows()
            publish(names.CP_HEARTBEAT, queue, beats)
            results[name].append(count / timed(queue, count, argv, processes))
            rows[name].append(1000 * (count_rows() - before) / count)
            updated[name].append(Host.objects.filter(agent_version=f"bench-{base}").count())
            print(f"run {run_no}: {name} {results[name][-1]:.0f} beats/s", flush=True)
        loads.append(os.getloadavg()[0])

    cpu_us = consumer_cpu_per_beat(heartbeats, base + 1000, args.batch_size)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(
        f"hosts={args.hosts} beats={args.beats} (peer, single: {args.celery_beats}) "
        f"repeat={args.repeat} "
        f"celery worker processes={args.concurrency} ingest consumers={args.consumers} "
        f"batch={args.batch_size} cores={os.cpu_count()}"
    )
    print(f"load average (1 min) during the runs: {' '.join(f'{x:.1f}' for x in loads)}")
    print(f"peer   celery no-op task         : {med['peer']:8.0f} msgs/s  {_runs(results['peer'])}")
    print(f"ours   batch ingestion           : {med['ours']:8.0f} beats/s {_runs(results['ours'])}")
    if results["single"]:
        print(
            f"single one Celery task per beat  : {med['single']:8.0f} beats/s "
            f"{_runs(results['single'])}"
        )

    # The machine is shared: a ratio within one run (same load) says more than a ratio of
    # medians, so both are printed.
    def ratio(a: str, b: str) -> str:
        per_run = [x / y for x, y in zip(results[a], results[b], strict=True)]
        return (
            f"{med[a] / med[b]:8.2f}  (median of per-run ratios "
            f"{statistics.median(per_run):.2f}; runs: {', '.join(f'{r:.2f}' for r in per_run)})"
        )

    print(f"ratio  ours/peer                 : {ratio('ours', 'peer')}")
    if results["single"]:
        print(f"ratio  ours/single               : {ratio('ours', 'single')}")
        print(f"ratio  single/peer               : {ratio('single', 'peer')}")
    print(
        f"ours   CPU of the consumer per beat (in process, load-independent): {cpu_us:.0f} us "
        f"= {1e6 / cpu_us:.0f} beats/s per core before the database's share"
    )
    print(
        "target 2000 beats/s (20,000 hosts at 10 s): "
        + ("met" if med["ours"] >= 2000 else "NOT met")
    )
    for name in updated:
        if updated[name]:
            print(
                f"{name:6} hosts updated per run       : {updated[name]} of {args.hosts}; "
                f"rows added per 1,000 beats: {rows[name]}"
            )
    return 0


def consumer_cpu_per_beat(make_beats: Any, base_seq: int, batch_size: int) -> float:
    """CPU seconds (this process only, so a loaded machine does not inflate it) that the
    batch path spends per beat: decode-free verify + bulk write, batches of ``batch_size``."""
    from hosts.ingest import HeartbeatIngestor

    beats = make_beats(base_seq, 4 * batch_size)
    ingestor = HeartbeatIngestor()
    started = time.process_time()
    for i in range(0, len(beats), batch_size):
        ingestor.ingest(beats[i : i + batch_size])
    return 1e6 * (time.process_time() - started) / len(beats)


def _runs(values: list[float]) -> str:
    return "(runs: " + ", ".join(f"{v:.0f}" for v in values) + ")"


if __name__ == "__main__":
    sys.exit(main())
