#!/usr/bin/env python
"""How many heartbeats per second the control plane ingests on this machine.

Real parts: PostgreSQL (a scratch database, dropped at the end), a private Redis, and the real
control-plane Celery worker process (prefork, 2 processes: this machine has 2 cores). Simulated
hosts are Host rows with their own Ed25519 keys; their heartbeats are real signed envelopes,
published to the ``controlplane`` queue before the worker starts, then timed from the worker's
first to last write. Peer, in the same run and worker: a no-op Celery task (Celery's own
floor on this machine), so the ratio says what our ingestion costs above Celery itself.
Also printed: rows added to the database per 1,000 beats (must be ~0: no row per beat).

    python bench/heartbeats.py [--hosts 2000] [--beats 20000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--beats", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    from tests.support.procs import Proc, free_port, wait_port

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
    from django.core.management import call_command
    from django.db import connection

    from agent.protocol import envelope, names
    from agent.protocol.messages import Heartbeat
    from config.celery import app
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

    def count_rows() -> int:
        with connection.cursor() as cur:
            cur.execute("SELECT sum(n_live_tup) FROM pg_stat_user_tables")
            return int(cur.fetchone()[0] or 0)

    def publish(task: str, messages: list[dict]) -> None:
        with app.producer_or_acquire() as producer:
            for message in messages:
                app.send_task(
                    task, kwargs={"message": message}, queue="controlplane", producer=producer
                )

    def drain(task: str, messages: list[dict], marker_host: Host | None) -> float:
        publish(task, messages)
        worker = Proc(
            "worker",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "controlplane",
                "-c",
                str(args.concurrency),
                "-l",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            env=env,
            log_dir=work,
        )
        try:
            import redis

            r = redis.Redis.from_url(env["CELERY_BROKER_URL"])
            while r.llen("controlplane") == len(messages):
                time.sleep(0.001)
            started = time.monotonic()
            while r.llen("controlplane") > 0 or r.hlen("unacked") > 0:
                time.sleep(0.005)
            return time.monotonic() - started
        finally:
            worker.stop()

    beats = []
    seq = 1
    for i in range(args.beats):
        host = hosts[i % len(hosts)]
        if i % len(hosts) == 0:
            seq += 1
        beats.append(
            envelope.seal(
                keys[(i % len(hosts)) % len(keys)],
                kind=names.CP_HEARTBEAT,
                host_id=str(host.pk),
                payload=Heartbeat(
                    seq=seq,
                    sent_at=time.time(),
                    agent_version="bench",
                    load1=0.5,
                    memory_total=8 << 30,
                    memory_available=4 << 30,
                ),
            )
        )
    noop = [{"n": i} for i in range(args.beats)]
    rows_before = count_rows()
    peer_s = drain("controlplane.bench.noop", noop, None)
    ours_s = drain(names.CP_HEARTBEAT, beats, hosts[-1])
    rows_after = count_rows()
    updated = Host.objects.filter(agent_version="bench").count()
    ours = args.beats / ours_s
    peer = args.beats / peer_s
    print(f"hosts={args.hosts} beats={args.beats} worker processes={args.concurrency}")
    print(f"peer  celery no-op task      : {peer:8.0f} msgs/s")
    print(f"ours  heartbeat ingestion    : {ours:8.0f} beats/s")
    print(f"ratio ours/peer              : {ours / peer:8.2f}")
    print(f"target 2000 beats/s (20,000 hosts at 10 s): {'met' if ours >= 2000 else 'NOT met'}")
    print(f"hosts updated                : {updated}/{args.hosts}")
    print(f"rows added per 1,000 beats   : {1000 * (rows_after - rows_before) / args.beats:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
