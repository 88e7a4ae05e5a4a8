"""Batched heartbeat ingestion (hosts/ingest.py, manage.py ingest_heartbeats) against the real
database (PostgreSQL in CI) and a private real Redis: verification per beat (a host can only
speak for itself), one bulk write per batch, status transitions, no row per beat, and the
consumer as a real process that survives malformed messages."""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agent.protocol import envelope, names
from agent.protocol.containers import ContainerStatus
from agent.protocol.messages import Heartbeat
from hosts.ingest import HEARTBEAT_QUEUE, HeartbeatIngestor, apply_heartbeats, verify_heartbeats
from hosts.models import ControlPlaneState, Host, HostStatusChange
from tests.support.procs import PYTHON, REPO, Proc, free_port, wait_for, wait_port
from tests.support.stack import database_url

pytestmark = pytest.mark.django_db(transaction=True)


# --- actors and helpers --------------------------------------------------------------------


def enrolled_host(name: str, *, status: str = "online", last_seq: int = 0) -> tuple[Host, Any]:
    """A host enrolled with its own Ed25519 key (the agent's side of the pair is returned)."""
    key = envelope.generate_key()
    host = Host.objects.create(
        name=name,
        status=status,
        last_seq=last_seq,
        public_key=envelope.public_key_to_text(key.public_key()),
    )
    return host, key


def beat(
    key: Ed25519PrivateKey,
    host_id: Any,
    seq: int,
    *,
    version: str = "1.0",
    containers: list[ContainerStatus] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A heartbeat envelope exactly as an agent seals it."""
    payload = Heartbeat(
        seq=seq,
        sent_at=time.time(),
        agent_version=version,
        load1=fields.get("load1", 0.25),
        memory_total=fields.get("memory_total", 8 << 30),
        memory_available=fields.get("memory_available", 4 << 30),
        containers=containers or [],
    )
    return envelope.seal(key, kind=names.CP_HEARTBEAT, host_id=str(host_id), payload=payload)


def row_count() -> int:
    """Rows in every table of the project's models: must not grow with beats."""
    return sum(model.objects.count() for model in apps.get_models())


def host_updates(queries: CaptureQueriesContext) -> list[str]:
    table = Host._meta.db_table
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith(f'UPDATE "{table}"')]


# --- one batch -----------------------------------------------------------------------------


def test_batch_updates_each_host_once_with_its_highest_seq() -> None:
    (a, ka), (b, kb), (c, kc) = (enrolled_host(n) for n in ("alpha", "bravo", "charlie"))
    messages = [
        beat(ka, a.pk, 5, version="a5"),
        beat(kb, b.pk, 3, version="b3"),
        beat(ka, a.pk, 7, version="a7", load1=1.5),
        beat(kc, c.pk, 10, version="c10", memory_total=None),
        beat(ka, a.pk, 6, version="a6"),
    ]
    random.Random(4).shuffle(messages)

    with CaptureQueriesContext(connection) as queries:
        result = HeartbeatIngestor().ingest(messages)

    assert (result.received, result.verified, result.updated, result.rejected) == (5, 5, 3, [])
    if connection.vendor == "postgresql":
        assert len(host_updates(queries)) == 1, host_updates(queries)
    got = {h.name: (h.last_seq, h.agent_version) for h in Host.objects.all()}
    assert got == {"alpha": (7, "a7"), "bravo": (3, "b3"), "charlie": (10, "c10")}
    alpha, charlie = Host.objects.get(pk=a.pk), Host.objects.get(pk=c.pk)
    assert alpha.load1 == 1.5 and alpha.last_heartbeat_at is not None
    assert charlie.memory_total is None  # a beat without memory_total keeps what was stored


def test_forged_beat_in_a_batch_is_rejected_and_the_rest_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (a, ka), (b, _), (c, kc) = (enrolled_host(n) for n in ("alpha", "bravo", "charlie"))
    forged = beat(ka, b.pk, 99, version="evil")  # host A's key, claiming host B
    messages = [beat(ka, a.pk, 2), forged, beat(kc, c.pk, 4)]

    with caplog.at_level(logging.WARNING, logger="hosts.ingest"):
        result = HeartbeatIngestor().ingest(messages)

    assert result.updated == 2 and len(result.rejected) == 1
    assert str(b.pk) in result.rejected[0] and "signature" in result.rejected[0]
    assert f"heartbeat rejected: {result.rejected[0]}" in caplog.text
    bravo = Host.objects.get(pk=b.pk)
    assert (bravo.last_seq, bravo.agent_version, bravo.last_heartbeat_at) == (0, "", None)
    assert Host.objects.get(pk=a.pk).last_seq == 2
    assert Host.objects.get(pk=c.pk).last_seq == 4


def test_beat_naming_another_host_with_its_own_signature_is_rejected() -> None:
    """Re-signing does not help: the envelope is checked against the key of the host it names."""
    (a, ka), (b, _) = enrolled_host("alpha"), enrolled_host("bravo")
    message = beat(ka, a.pk, 5)
    message["host_id"] = str(b.pk)  # tampered after signing

    beats, rejected = verify_heartbeats([message])

    assert beats == [] and "signature does not verify" in rejected[0]


def test_stale_seq_changes_nothing() -> None:
    host, key = enrolled_host("alpha", last_seq=100)
    Host.objects.filter(pk=host.pk).update(agent_version="old", load1=0.1)

    result = HeartbeatIngestor().ingest(
        [beat(key, host.pk, 50, version="new"), beat(key, host.pk, 100)]
    )

    assert (result.verified, result.updated, result.stale) == (2, 0, 2)
    row = Host.objects.get(pk=host.pk)
    assert (row.last_seq, row.agent_version, row.load1, row.last_heartbeat_at) == (
        100,
        "old",
        0.1,
        None,
    )


@pytest.mark.parametrize("status", ["offline", "unknown", "pending"])
def test_host_not_online_that_beats_comes_online_with_a_history_row(status: str) -> None:
    host, key = enrolled_host("alpha", status=status)
    other, other_key = enrolled_host("bravo", status="online")

    result = HeartbeatIngestor().ingest([beat(key, host.pk, 1), beat(other_key, other.pk, 1)])

    assert result.came_online == 1
    assert Host.objects.get(pk=host.pk).status == "online"
    changes = list(HostStatusChange.objects.values_list("host_id", "from_status", "to_status"))
    assert changes == [(host.pk, status, "online")]


def test_malformed_messages_are_rejected_with_a_reason_and_the_batch_still_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host, key = enrolled_host("alpha")
    good = beat(key, host.pk, 3)
    no_signature = {**beat(key, host.pk, 4), "signature": "!!"}
    wrong_kind = envelope.seal(
        key,
        kind=names.CP_HEARTBEAT,
        host_id=str(host.pk),
        payload=Heartbeat(seq=5, sent_at=0.0, agent_version="x"),
    )
    wrong_kind["payload"]["seq"] = "five"  # fails the schema (and the signature)
    too_long = beat(key, host.pk, 6, version="v" * 40)
    messages = ["junk", None, {"host_id": 7}, {"host_id": "not-a-uuid"}, no_signature]
    messages += [wrong_kind, too_long, good]

    with caplog.at_level(logging.WARNING, logger="hosts.ingest"):
        result = HeartbeatIngestor().ingest(messages)

    assert result.updated == 1 and len(result.rejected) == 7
    reasons = "\n".join(result.rejected)
    assert "report has no host_id" in reasons
    assert "unknown or unenrolled host 'not-a-uuid'" in reasons
    assert "payload.agent_version is longer than 32 characters" in reasons
    assert caplog.text.count("heartbeat rejected:") == 7
    assert Host.objects.get(pk=host.pk).last_seq == 3


def test_no_row_is_added_per_beat() -> None:
    fleet = [enrolled_host(f"h{i:02d}") for i in range(20)]
    ingestor = HeartbeatIngestor()
    ingestor.ingest([beat(k, h.pk, 1) for h, k in fleet])
    before = row_count()

    for seq in range(2, 12):
        ingestor.ingest([beat(k, h.pk, seq) for h, k in fleet])

    assert row_count() == before
    assert set(Host.objects.values_list("last_seq", flat=True)) == {11}


def test_the_portable_path_gives_the_same_result_as_the_bulk_statement() -> None:
    """What SQLite (and a failed bulk statement) runs: one beat at a time."""
    from hosts import ingest

    (a, ka), (b, kb) = enrolled_host("alpha", status="offline"), enrolled_host("bravo", last_seq=9)
    beats, _ = verify_heartbeats([beat(ka, a.pk, 2), beat(ka, a.pk, 3), beat(kb, b.pk, 5)])

    fresh, online = ingest._apply_one_by_one(ingest.newest_per_host(beats), ingest.timezone.now())

    assert (fresh, online) == ({str(a.pk)}, 1)
    assert Host.objects.get(pk=a.pk).last_seq == 3 and Host.objects.get(pk=b.pk).last_seq == 9
    assert apply_heartbeats([]) == (set(), 0)


def test_container_changes_are_applied_only_when_the_list_changed() -> None:
    host, key = enrolled_host("alpha")
    calls: list[tuple[list[str], bool]] = []

    def hook(h: Host, statuses: list[ContainerStatus], *, check_missing: bool) -> int:
        assert h.pk == host.pk
        calls.append(([f"{s.id}:{s.state}" for s in statuses], check_missing))
        return len(statuses)

    running = ContainerStatus(id="c1", state="running", pid=42)
    ingestor = HeartbeatIngestor(containers=hook, missing_check_every=3600)
    ingestor.ingest([beat(key, host.pk, 1, containers=[running])])
    ingestor.ingest([beat(key, host.pk, 2, containers=[running])])
    ingestor.ingest([beat(key, host.pk, 2, containers=[])])  # stale: nothing at all
    stopped = ContainerStatus(id="c1", state="stopped", exit_code=0)
    ingestor.ingest([beat(key, host.pk, 3, containers=[stopped])])

    assert calls == [(["c1:running"], False), (["c1:stopped"], False)]


def test_the_check_for_missing_containers_comes_within_its_interval_not_at_first_sight() -> None:
    """A consumer (re)started under a large fleet spreads its first checks over the interval
    instead of running one per host at once; each host is still checked within it."""
    host, key = enrolled_host("alpha")
    calls: list[bool] = []

    def hook(h: Host, statuses: list[ContainerStatus], *, check_missing: bool) -> int:
        calls.append(check_missing)
        return 0

    ingestor = HeartbeatIngestor(containers=hook, missing_check_every=0.3)
    ingestor.ingest([beat(key, host.pk, 1)])  # first sight: the list is applied, no check yet
    seq = 2
    deadline = time.monotonic() + 0.35
    while time.monotonic() < deadline and True not in calls:
        ingestor.ingest([beat(key, host.pk, seq)])
        seq += 1
        time.sleep(0.02)
    assert calls[0] is False
    assert True in calls  # checked within the interval


def test_the_celery_task_is_a_batch_of_one(caplog: pytest.LogCaptureFixture) -> None:
    from containers.tasks import heartbeat_report

    (a, ka), (b, _) = enrolled_host("alpha", status="unknown"), enrolled_host("bravo")
    heartbeat_report(message=beat(ka, a.pk, 8))
    with caplog.at_level(logging.WARNING, logger="hosts.ingest"):
        heartbeat_report(message=beat(ka, b.pk, 9))

    assert Host.objects.get(pk=a.pk).status == "online"
    assert Host.objects.get(pk=a.pk).last_seq == 8
    assert Host.objects.get(pk=b.pk).last_seq == 0
    assert "heartbeat rejected" in caplog.text


# --- the consumer as a real process --------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private redis-server on loopback for this module, stopped at the end."""
    work = Path(tempfile.mkdtemp(prefix="corral-ingest-redis-"))
    port = free_port()
    proc = Proc(
        "redis",
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(work)),
        ],
        log_dir=work,
    )
    try:
        wait_port("127.0.0.1", port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def agent_app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A Celery app as an agent has one: it sends tasks by name to the broker."""
    import redis

    redis.Redis.from_url(redis_url).flushall()
    monkeypatch.setenv("CELERY_BROKER_URL", redis_url)  # Celery prefers it to broker=
    app = Celery("test-agent", broker=redis_url)
    app.conf.task_serializer = "json"
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def consumer(redis_url: str, agent_app: Celery, tmp_path: Path) -> Iterator[Proc]:
    """``manage.py ingest_heartbeats`` as a real process on this test's database."""
    ControlPlaneState.objects.get_or_create(pk=1)
    proc = Proc(
        "ingest",
        [PYTHON, "manage.py", "ingest_heartbeats", "--batch-size", "50", "--max-wait-ms", "50"],
        env={
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": redis_url,
            "CORRAL_VAR_DIR": str(tmp_path / "var"),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        },
        log_dir=tmp_path,
        cwd=REPO,
    )
    try:
        wait_for(lambda: "ingesting heartbeats" in proc.log() or not proc.alive(), 30, "consumer")
        assert proc.alive(), proc.log()
        yield proc
    finally:
        proc.stop()


def wait_or_log(proc: Proc, predicate: Any, timeout: float, what: str) -> None:
    """wait_for, failing with the consumer's log (what it rejected, or why it died)."""
    try:
        wait_for(predicate, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {proc.name} log ---\n{proc.log()[-4000:]}") from None


def queue_drained(redis_url: str) -> bool:
    import redis

    r = redis.Redis.from_url(redis_url)
    return r.llen(HEARTBEAT_QUEUE) == 0 and r.hlen("unacked") == 0


@pytest.mark.e2e
def test_consumer_process_applies_beats_and_survives_malformed_messages(
    consumer: Proc, agent_app: Celery, redis_url: str
) -> None:
    from kombu import Connection

    fleet = [enrolled_host(f"h{i:02d}", status="offline") for i in range(10)]
    send = agent_app.send_task
    for seq in (1, 2, 3):
        for host, key in fleet:
            send(
                names.CP_HEARTBEAT,
                kwargs={"message": beat(key, host.pk, seq)},
                queue=HEARTBEAT_QUEUE,
            )
    (h0, k0), (h1, _) = fleet[0], fleet[1]
    send(names.CP_HEARTBEAT, kwargs={"message": beat(k0, h1.pk, 50)}, queue=HEARTBEAT_QUEUE)
    send("controlplane.inventory.report", kwargs={"message": {}}, queue=HEARTBEAT_QUEUE)
    send(names.CP_HEARTBEAT, kwargs={"message": "junk"}, queue=HEARTBEAT_QUEUE)
    with Connection(redis_url) as conn:  # not JSON at all
        conn.Producer().publish(
            b"\x00not json",
            routing_key=HEARTBEAT_QUEUE,
            content_type="application/json",
            content_encoding="binary",
            exchange=HEARTBEAT_QUEUE,
        )
    send(names.CP_HEARTBEAT, kwargs={"message": beat(k0, h0.pk, 4)}, queue=HEARTBEAT_QUEUE)

    wait_or_log(
        consumer,
        lambda: (
            Host.objects.filter(last_seq=3).count() == 9
            and Host.objects.get(pk=h0.pk).last_seq == 4
        ),
        30,
        "all beats applied",
    )
    wait_or_log(consumer, lambda: queue_drained(redis_url), 10, "every message acked")
    assert consumer.alive(), consumer.log()
    assert set(Host.objects.values_list("status", flat=True)) == {"online"}
    assert HostStatusChange.objects.count() == 10  # one per host, not one per beat
    assert Host.objects.get(pk=h1.pk).last_seq == 3  # the forged seq 50 was refused
    log = consumer.log()
    assert "signature does not verify" in log
    assert "is not 'controlplane.heartbeat.report'" in log
    assert "report has no host_id" in log
    assert "undecodable message" in log
    assert ControlPlaneState.objects.get(pk=1).last_ingest_at is not None


@pytest.mark.e2e
def test_consumer_exits_cleanly_on_sigterm_and_requeues_nothing_it_acked(
    consumer: Proc, agent_app: Celery, redis_url: str
) -> None:
    host, key = enrolled_host("alpha")
    agent_app.send_task(
        names.CP_HEARTBEAT, kwargs={"message": beat(key, host.pk, 1)}, queue=HEARTBEAT_QUEUE
    )
    wait_or_log(consumer, lambda: Host.objects.get(pk=host.pk).last_seq == 1, 30, "beat applied")
    consumer.stop()

    assert consumer.popen.returncode == 0, consumer.log()
    assert "hosts_updated=1" in consumer.log()
    assert queue_drained(redis_url)


@pytest.mark.e2e
def test_agent_reporter_sends_heartbeats_to_the_consumer_and_other_reports_to_the_worker(
    consumer: Proc, agent_app: Celery, redis_url: str, tmp_path: Path
) -> None:
    import redis

    from agent.journal import Journal
    from agent.reporting import Heartbeater, Reporter

    host, key = enrolled_host("alpha", status="unknown")
    reporter = Reporter(
        agent_app,
        key,
        str(host.pk),
        Journal(tmp_path / "journal.db"),
    )  # the default queue: agents send beats to the consumer
    assert reporter.heartbeat_queue == HEARTBEAT_QUEUE
    beater = Heartbeater(
        reporter, 1.0, lambda seq: Heartbeat(seq=seq, sent_at=time.time(), agent_version="2.0")
    )
    assert beater.beat()
    reporter.send_now(names.CP_INVENTORY, _inventory())

    wait_or_log(consumer, lambda: Host.objects.get(pk=host.pk).status == "online", 30, "online")
    assert Host.objects.get(pk=host.pk).agent_version == "2.0"
    assert redis.Redis.from_url(redis_url).llen(names.CONTROLPLANE_QUEUE) == 1  # the worker's


def _inventory() -> Any:
    from agent.protocol.messages import InventoryReport

    return InventoryReport(collected_at=time.time(), inventory={})


def test_taken_but_unapplied_batch_is_restored_by_kombu_after_a_crash(
    agent_app: Celery, redis_url: str
) -> None:
    """The batch source books messages as unacked exactly as kombu does, so when a consumer
    dies between taking a batch and committing it, kombu's visibility-timeout restore (run by
    any consumer of the broker) puts the messages back; nothing is lost, nothing was acked."""
    import redis
    from kombu import Connection

    from hosts.management.commands.ingest_heartbeats import RedisBatchSource

    host, key = enrolled_host("alpha")
    for seq in (1, 2, 3):
        agent_app.send_task(
            names.CP_HEARTBEAT, kwargs={"message": beat(key, host.pk, seq)}, queue=HEARTBEAT_QUEUE
        )
    r = redis.Redis.from_url(redis_url)
    r.delete(
        f"_kombu.binding.{HEARTBEAT_QUEUE}"
    )  # as after a broker restart: the source redeclares it
    taken = RedisBatchSource(redis_url, HEARTBEAT_QUEUE).get(10)
    assert len(taken) == 3 and r.llen(HEARTBEAT_QUEUE) == 0 and r.hlen("unacked") == 3
    # ... the consumer is SIGKILLed here; later kombu restores what was never acked:
    with Connection(redis_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=100)
    assert (r.llen(HEARTBEAT_QUEUE), r.hlen("unacked")) == (3, 0)

    source = RedisBatchSource(redis_url, HEARTBEAT_QUEUE)
    again = source.get(10)
    from hosts.management.commands.ingest_heartbeats import decode_delivery, envelope_of

    result = HeartbeatIngestor().ingest([envelope_of(*decode_delivery(d.raw)) for d in again])
    source.ack(again)
    assert result.updated == 1 and Host.objects.get(pk=host.pk).last_seq == 3
    assert r.llen(HEARTBEAT_QUEUE) == 0 and r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


def test_requeued_batch_comes_back_first_and_in_order(agent_app: Celery, redis_url: str) -> None:
    from hosts.management.commands.ingest_heartbeats import RedisBatchSource, decode_delivery

    for n in range(5):
        agent_app.send_task("controlplane.bench.noop", kwargs={"message": n}, queue=HEARTBEAT_QUEUE)
    source = RedisBatchSource(redis_url, HEARTBEAT_QUEUE)
    first = source.get(3)
    source.requeue(first)
    again = source.get(10)

    assert [decode_delivery(d.raw)[0][1]["message"] for d in again] == [0, 1, 2, 3, 4]
    source.ack(again)


def test_kombu_path_on_a_broker_without_batch_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make run`` uses kombu's filesystem transport: the consumer falls back to a plain
    kombu consumer there, with the same batches, rejections and acks."""
    from hosts.management.commands.ingest_heartbeats import HeartbeatConsumer

    folder = tmp_path / "broker"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),  # kombu's default is ./control
    }
    monkeypatch.setenv("CELERY_BROKER_URL", "filesystem://")
    app = Celery("fs-agent", broker="filesystem://")
    app.conf.broker_transport_options = options
    (a, ka), (b, kb) = enrolled_host("alpha", status="offline"), enrolled_host("bravo")
    try:
        for message in (beat(ka, a.pk, 1), beat(kb, b.pk, 2), beat(ka, b.pk, 9), "junk"):
            app.send_task(names.CP_HEARTBEAT, kwargs={"message": message}, queue=HEARTBEAT_QUEUE)
        app.send_task("controlplane.other", kwargs={"message": {}}, queue=HEARTBEAT_QUEUE)
    finally:
        app.close()

    consumer = HeartbeatConsumer(
        "filesystem://",
        ingestor=HeartbeatIngestor(),
        max_wait=0.1,
        idle_exit=1.0,
        transport_options=options,
    )
    totals = consumer.run()

    assert (totals.updated, totals.came_online, len(totals.rejected)) == (2, 1, 3)
    assert Host.objects.get(pk=a.pk).status == "online"
    assert Host.objects.get(pk=b.pk).last_seq == 2
    assert list(folder.iterdir()) == []  # every message acked (consumed) from the folder


def test_the_consumer_runs_the_liveness_sweep_also_when_no_beat_arrives(
    redis_url: str, agent_app: Celery
) -> None:
    """Where heartbeats are read is where a missing one is noticed: the consumer sweeps on its
    own, so a host goes unknown/offline without a beat process (or any beat) in the picture."""
    from datetime import timedelta

    from django.utils import timezone

    from hosts.management.commands.ingest_heartbeats import HeartbeatConsumer

    long_ago = timezone.now() - timedelta(hours=1)
    ControlPlaneState.objects.update_or_create(
        pk=1, defaults={"resumed_at": long_ago, "last_ingest_at": timezone.now()}
    )
    silent, _ = enrolled_host("silent")
    quiet, _ = enrolled_host("quiet")
    Host.objects.filter(pk=silent.pk).update(last_heartbeat_at=long_ago)
    Host.objects.filter(pk=quiet.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=50)  # past unknown (40 s) only
    )
    consumer = HeartbeatConsumer(
        redis_url, ingestor=HeartbeatIngestor(), max_wait=0.05, idle_exit=0.3
    )
    consumer.run()
    assert Host.objects.get(pk=silent.pk).status == "offline"
    assert Host.objects.get(pk=quiet.pk).status == "unknown"
    reasons = set(HostStatusChange.objects.values_list("reason", flat=True))
    assert {"no heartbeat", "missed heartbeats"} <= reasons
