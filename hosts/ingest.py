"""Heartbeat ingestion in batches: verify every beat, then write a whole batch at once.

A fleet of 20,000 hosts beating every 10 s sends 2,000 heartbeats a second. Handling each as
its own Celery task costs a task dispatch, a host lookup and an UPDATE per beat; here a batch
of beats is verified one by one (Ed25519 per beat, against the key of the host the envelope
names, so a host can only speak for itself), collapsed to the newest beat per host, and
applied with one bulk UPDATE on PostgreSQL. Rows change in place: no row is added per beat.

:class:`HeartbeatIngestor` is shared by the dedicated consumer (``manage.py
ingest_heartbeats``, :class:`HeartbeatConsumer`) and the ``controlplane.heartbeat.report``
Celery task, which hands it a batch of one.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any, Protocol

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from agent.protocol import envelope, names
from agent.protocol.containers import ContainerStatus
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import Heartbeat
from hosts import services
from hosts.choices import HostStatus
from hosts.keys import host_public_key
from hosts.models import Host

logger = logging.getLogger(__name__)

HEARTBEAT_QUEUE = getattr(names, "HEARTBEAT_QUEUE", "controlplane.heartbeats")
BIGINT_MAX = 2**63 - 1
# Columns a beat never needs to be verified or applied; inventory can be large.
_DEFERRED = ("inventory", "findings")


class ContainersHook(Protocol):
    """Applies a host's reported containers; returns how many changed. Provided by the
    containers app (``containers.services.containers_apply_heartbeat``): hosts must not
    import containers."""

    def __call__(
        self, host: Host, statuses: list[ContainerStatus], *, check_missing: bool
    ) -> int: ...


@dataclass(frozen=True)
class Beat:
    """A verified heartbeat and the id of the host that signed it."""

    host_id: str
    heartbeat: Heartbeat


@dataclass
class BatchResult:
    """What one batch did; ``rejected`` holds the logged reason of every refused message."""

    received: int = 0
    verified: int = 0
    updated: int = 0
    stale: int = 0
    came_online: int = 0
    container_updates: int = 0
    rejected: list[str] = field(default_factory=list)


# --- verification --------------------------------------------------------------------------


def _column_problem(beat: Heartbeat) -> str | None:
    """A value that the database would refuse would fail the whole bulk statement, so such a
    beat is rejected on its own, naming the field."""
    max_version = Host._meta.get_field("agent_version").max_length or 32
    if not 0 < beat.seq <= BIGINT_MAX:
        return f"payload.seq {beat.seq} is out of range"
    if len(beat.agent_version) > max_version:
        return f"payload.agent_version is longer than {max_version} characters"
    for name in ("memory_total", "memory_available"):
        value = getattr(beat, name)
        if value is not None and not -BIGINT_MAX <= value <= BIGINT_MAX:
            return f"payload.{name} is out of range"
    return None


def _host_id_of(data: Any) -> str | None:
    host_id = data.get("host_id") if isinstance(data, dict) else None
    if not isinstance(host_id, str):
        return None
    try:
        uuid.UUID(host_id)
    except ValueError:
        return None
    return host_id


def verify_heartbeats(
    messages: Sequence[Any], *, now: float | None = None
) -> tuple[list[Beat], list[str]]:
    """Verify each envelope against the key of the host it names (one query for the hosts of
    the whole batch; parsed keys are cached). Same checks and reasons as
    ``hosts.reports.verify_report``; returns the verified beats and the rejection reasons."""
    ids = {hid for hid in map(_host_id_of, messages) if hid is not None}
    keys = _public_keys(ids)
    beats: list[Beat] = []
    rejected: list[str] = []
    for data in messages:
        try:
            beats.append(_verify_one(data, keys, now))
        except _Rejected as exc:
            rejected.append(str(exc))
    return beats, rejected


class _Rejected(Exception):
    pass


def _public_keys(ids: set[str]) -> dict[str, str]:
    """{host id: public key text} of enrolled hosts, in one query (no model instances: only
    the few hosts that change status or containers are loaded as such)."""
    if not ids:
        return {}
    rows = Host.objects.filter(pk__in=ids).exclude(public_key="").values_list("id", "public_key")
    return {str(pk): key for pk, key in rows}


def hosts_by_id(ids: Iterable[str]) -> dict[str, Host]:
    return {str(h.pk): h for h in Host.objects.filter(pk__in=set(ids)).defer(*_DEFERRED)}


def _verify_one(data: Any, keys: dict[str, str], now: float | None) -> Beat:
    kind = names.CP_HEARTBEAT
    raw_id = data.get("host_id") if isinstance(data, dict) else None
    if not isinstance(raw_id, str):
        raise _Rejected("report has no host_id")
    key_text = keys.get(raw_id) if _host_id_of(data) else None
    if not key_text:
        raise _Rejected(f"report from unknown or unenrolled host {raw_id!r}")
    try:
        key = host_public_key(key_text)
        _, message = envelope.open_envelope(
            data, key, expected_kind=kind, expected_host=raw_id, now=now
        )
    except ProtocolError as exc:
        raise _Rejected(f"{kind} claiming host {raw_id}: {exc}") from None
    if not isinstance(message, Heartbeat):  # pragma: no cover - the kind maps to Heartbeat
        raise _Rejected(f"{kind} claiming host {raw_id}: payload is not a heartbeat")
    problem = _column_problem(message)
    if problem:
        raise _Rejected(f"{kind} claiming host {raw_id}: {problem}")
    return Beat(host_id=raw_id, heartbeat=message)


def newest_per_host(beats: Iterable[Beat]) -> list[Beat]:
    """Only the highest seq of each host matters: older beats in a batch are superseded."""
    best: dict[str, Beat] = {}
    for beat in beats:
        key = beat.host_id
        if key not in best or beat.heartbeat.seq > best[key].heartbeat.seq:
            best[key] = beat
    return sorted(best.values(), key=lambda b: b.host_id)


# --- writing -------------------------------------------------------------------------------


def _bulk_update_postgres(beats: Sequence[Beat], now: datetime) -> dict[str, str]:
    """One UPDATE for the batch, joined to the beats passed as six arrays (``unnest``: the same
    as ``FROM (VALUES ...)`` with a constant statement of seven parameters whatever the batch
    size, so the driver does not parse thousands of placeholders). Only rows whose stored seq
    is lower change. Returns {host id: status} of the updated hosts."""
    meta = Host._meta
    qn = connection.ops.quote_name

    def col(name: str) -> str:
        return qn(meta.get_field(name).column)

    hbs = [b.heartbeat for b in beats]
    params: list[Any] = [
        now,
        [uuid.UUID(b.host_id) for b in beats],
        [hb.seq for hb in hbs],
        [hb.agent_version for hb in hbs],
        [hb.load1 for hb in hbs],
        [hb.memory_available for hb in hbs],
        [hb.memory_total for hb in hbs],
    ]
    # memory_total: a beat without it (or 0) keeps the stored value, as host_heartbeat_record.
    # Identifiers come from the model's metadata; every value is a query parameter.
    sql = (
        f"UPDATE {qn(meta.db_table)} AS h SET {col('last_seq')} = v.seq, "  # noqa: S608
        f"{col('last_heartbeat_at')} = %s, {col('agent_version')} = v.agent_version, "
        f"{col('load1')} = v.load1, {col('memory_available')} = v.memory_available, "
        f"{col('memory_total')} = COALESCE(NULLIF(v.memory_total, 0), h.{col('memory_total')}) "
        "FROM unnest(%s::uuid[], %s::bigint[], %s::varchar[], %s::double precision[], "
        "%s::bigint[], %s::bigint[]) "
        "AS v(id, seq, agent_version, load1, memory_available, memory_total) "
        f"WHERE h.{col('id')} = v.id AND h.{col('last_seq')} < v.seq "
        f"RETURNING h.{col('id')}, h.{col('status')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {str(pk): status for pk, status in cursor.fetchall()}


def _come_online(beats: Sequence[Beat], updated: dict[str, str], now: datetime) -> int:
    """unknown/offline/pending -> online, with a history row, for updated hosts not online
    (usually none: only those rows are loaded)."""
    waking = {hid for hid, status in updated.items() if status != HostStatus.ONLINE}
    if not waking:
        return 0
    seq = {b.host_id: b.heartbeat.seq for b in beats}
    count = 0
    for host_id, host in sorted(hosts_by_id(waking).items()):
        host.last_seq, host.last_heartbeat_at = seq[host_id], now
        if services.host_set_status(host, HostStatus.ONLINE, reason="heartbeat received"):
            count += 1
    return count


def _apply_one_by_one(beats: Sequence[Beat], now: datetime) -> tuple[set[str], int]:
    """The portable path (SQLite, or a bulk statement that failed): the per-beat service, each
    beat in its own transaction so one bad row cannot hold back the others."""
    fresh: set[str] = set()
    online = 0
    hosts = hosts_by_id(b.host_id for b in beats)
    for beat in beats:
        host, hb = hosts.get(beat.host_id), beat.heartbeat
        if host is None:  # deleted since it was verified
            continue
        before = host.status
        try:
            with transaction.atomic():
                if services.host_heartbeat_record(
                    host,
                    seq=hb.seq,
                    agent_version=hb.agent_version,
                    load1=hb.load1,
                    memory_available=hb.memory_available,
                    memory_total=hb.memory_total,
                    now=now,
                ):
                    fresh.add(str(host.pk))
                    online += before != HostStatus.ONLINE and host.status == HostStatus.ONLINE
        except DatabaseError as exc:
            logger.warning("heartbeat of host %s (seq %s) not applied: %s", host.pk, hb.seq, exc)
    return fresh, online


def apply_heartbeats(beats: Sequence[Beat], *, now: datetime | None = None) -> tuple[set[str], int]:
    """Write verified beats (newest per host): one bulk statement and the status transitions in
    one transaction on PostgreSQL, else one by one. Returns (ids of hosts updated, hosts that
    came online)."""
    now = now or timezone.now()
    beats = newest_per_host(beats)
    if not beats:
        return set(), 0
    if connection.vendor != "postgresql":
        return _apply_one_by_one(beats, now)
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                updated = _bulk_update_postgres(beats, now)
                online = _come_online(beats, updated, now)
            return set(updated), online
        except DatabaseError as exc:
            # A deadlock with a concurrent writer is worth one retry; anything else falls
            # back to one transaction per beat.
            logger.warning("bulk heartbeat update failed (attempt %d): %s", attempt, exc)
    return _apply_one_by_one(beats, now)


# --- the per-batch entry point -------------------------------------------------------------


class HeartbeatIngestor:
    """Verifies and applies batches of heartbeat envelopes; keeps, per process, what it last
    applied of each host's container list, so container rows are touched only when a host's
    list changed (or its periodic check for missing containers is due)."""

    def __init__(
        self,
        *,
        containers: ContainersHook | None = None,
        missing_check_every: float | None = None,
    ) -> None:
        self.containers = containers
        self.missing_check_every = missing_check_every
        self._fingerprints: dict[str, int] = {}
        self._last_missing_check: dict[str, float] = {}

    def ingest(self, messages: Sequence[Any], *, now: datetime | None = None) -> BatchResult:
        """Verify, write, then apply container changes of the hosts that were updated. Every
        rejection is logged with its reason; nothing of a rejected message is written."""
        result = BatchResult(received=len(messages))
        beats, result.rejected = verify_heartbeats(messages)
        for reason in result.rejected:
            logger.warning("heartbeat rejected: %s", reason)
        result.verified = len(beats)
        fresh, result.came_online = apply_heartbeats(beats, now=now)
        result.updated = len(fresh)
        result.stale = result.verified - result.updated
        if self.containers is not None:
            result.container_updates = self._apply_containers(newest_per_host(beats), fresh)
        return result

    def _apply_containers(self, beats: Sequence[Beat], fresh: set[str]) -> int:
        """Call the containers hook for updated hosts whose list changed or whose check for
        missing containers is due; the hosts are loaded in one query, only those."""
        assert self.containers is not None
        every = self.missing_check_every
        if every is None:
            every = float(settings.CORRAL["HEARTBEAT_INTERVAL"])
        mono = time.monotonic()
        due: list[tuple[Beat, int, bool]] = []
        for beat in beats:
            if beat.host_id not in fresh:
                continue
            fingerprint = hash(tuple(beat.heartbeat.containers))
            check_missing = mono - self._last_missing_check.get(beat.host_id, -every) >= every
            if check_missing or self._fingerprints.get(beat.host_id) != fingerprint:
                due.append((beat, fingerprint, check_missing))
        if not due:
            return 0
        hosts = hosts_by_id(b.host_id for b, _, _ in due)
        count = 0
        for beat, fingerprint, check_missing in due:
            host = hosts.get(beat.host_id)
            if host is not None:
                count += self._containers_of(host, beat, fingerprint, check_missing, mono)
        return count

    def _containers_of(
        self, host: Host, beat: Beat, fingerprint: int, check_missing: bool, mono: float
    ) -> int:
        assert self.containers is not None
        key = beat.host_id
        try:
            count = self.containers(
                host, list(beat.heartbeat.containers), check_missing=check_missing
            )
        except Exception:
            # The host part is committed; the next beat retries the containers.
            self._fingerprints.pop(key, None)
            logger.exception("containers of host %s from its heartbeat not applied", key)
            return 0
        self._fingerprints[key] = fingerprint
        if check_missing:
            self._last_missing_check[key] = mono
        return count


# --- the dedicated consumer ----------------------------------------------------------------


def envelope_of(body: Any, headers: dict[str, Any] | None) -> Any:
    """The ``message`` kwarg of a Celery heartbeat task (protocol 2: ``[args, kwargs, embed]``
    with the task name in the headers; protocol 1: a dict). Raises _Rejected naming the part."""
    headers = headers or {}
    task = headers.get("task")
    if isinstance(body, dict) and task is None:  # Celery message protocol 1
        task, kwargs = body.get("task"), body.get("kwargs")
    elif isinstance(body, list | tuple) and len(body) == 3:
        kwargs = body[1]
    else:
        raise _Rejected("message body is not a Celery task (expected [args, kwargs, embed])")
    if task != names.CP_HEARTBEAT:
        raise _Rejected(f"task {task!r} is not {names.CP_HEARTBEAT!r}")
    if not isinstance(kwargs, dict) or "message" not in kwargs:
        raise _Rejected("task kwargs have no 'message'")
    return kwargs["message"]


# Pops up to ARGV[1] messages from the queue and records each as unacked exactly as kombu's
# Redis QoS does (hash "unacked": tag -> [message, exchange, routing_key]; zset
# "unacked_index": tag -> time), in one round trip. So a consumer that dies before its ack
# loses nothing: any kombu consumer of this broker (the control-plane worker) restores
# unacked messages after the visibility timeout, as it does for Celery's own.
_POP_BATCH = """
local msgs = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not msgs then return {} end
for i, m in ipairs(msgs) do
  local tag = ARGV[4 + i]
  redis.call('HSET', KEYS[2], tag, '[' .. m .. ',' .. ARGV[2] .. ',' .. ARGV[3] .. ']')
  redis.call('ZADD', KEYS[3], ARGV[4], tag)
end
return msgs
"""


@dataclass(frozen=True)
class _Delivery:
    tag: str
    raw: bytes


class RedisBatchSource:
    """Batch get/ack on a Redis broker: one script call takes a whole batch, one transaction
    acks it. kombu takes three round trips per message (BRPOP, unacked bookkeeping, ack),
    which alone would cap a loaded 2-core machine below the fleet's heartbeat rate."""

    unacked_key = "unacked"
    unacked_index_key = "unacked_index"

    def __init__(self, url: str, queue: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.queue = queue
        self._pop = self.client.register_script(_POP_BATCH)
        self._route = json.dumps(queue)  # Celery declares exchange = routing key = queue name

    def get(self, limit: int) -> list[_Delivery]:
        tags = [uuid.uuid4().hex for _ in range(limit)]
        raws = self._pop(
            keys=[self.queue, self.unacked_key, self.unacked_index_key],
            args=[limit, self._route, self._route, time.time(), *tags],
        )
        return [_Delivery(tag, raw) for tag, raw in zip(tags, raws, strict=False)]

    def ack(self, deliveries: Sequence[_Delivery]) -> None:
        if deliveries:
            tags = [d.tag for d in deliveries]
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.unacked_key, *tags).zrem(self.unacked_index_key, *tags).execute()

    def requeue(self, deliveries: Sequence[_Delivery]) -> None:
        """Back to the consuming end of the queue, in their order, and no longer unacked."""
        if deliveries:
            tags = [d.tag for d in deliveries]
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(self.queue, *[d.raw for d in reversed(deliveries)])
            pipe.hdel(self.unacked_key, *tags).zrem(self.unacked_index_key, *tags).execute()


def decode_delivery(raw: bytes) -> tuple[Any, dict[str, Any]]:
    """(body, headers) of a kombu message as stored in Redis. Raises _Rejected."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        if message.get("content-type") != "application/json":
            raise _Rejected(f"content type {message.get('content-type')!r} is not JSON")
        return json.loads(body), message.get("headers") or {}
    except _Rejected:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Rejected(f"undecodable message: {exc}") from None


class HeartbeatConsumer:
    """Drains the heartbeat queue in batches of up to ``batch_size`` messages or ``max_wait``
    seconds, ingests each batch, and acks its messages only after the batch is committed, so
    a crash loses nothing: unacked messages go back to the queue. Malformed messages are
    logged and acked (dropped); they never stop the consumer."""

    def __init__(
        self,
        broker_url: str,
        *,
        ingestor: HeartbeatIngestor,
        queue: str = HEARTBEAT_QUEUE,
        batch_size: int = 500,
        max_wait: float = 0.2,
        idle_exit: float | None = None,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_wait <= 0:
            raise ValueError("max_wait must be positive")
        self.broker_url = broker_url
        self.ingestor = ingestor
        self.queue_name = queue
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.idle_exit = idle_exit
        self.transport_options = transport_options or {}
        self.stopping = False
        self.totals = BatchResult()
        self._pending: list[tuple[Any, Any]] = []  # (kombu message, envelope data)
        self._last_note = 0.0
        self._db_backoff = 1.0

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: finishing the current batch, then exiting", signum)
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> BatchResult:
        """Consume until stopped (signal, or ``idle_exit`` seconds without a message)."""
        if self.broker_url.split(":", 1)[0] in ("redis", "rediss"):
            self._run_redis()
            return self.totals
        from kombu import Connection, Consumer, Exchange, Queue

        # The same queue Celery declares for ``send_task(..., queue=name)``.
        queue = Queue(self.queue_name, Exchange(self.queue_name), routing_key=self.queue_name)
        backoff = 1.0
        while not self.stopping:
            conn = Connection(self.broker_url, transport_options=self.transport_options)
            broker_errors = (*conn.connection_errors, *conn.channel_errors, OSError)
            try:
                with conn:
                    conn.ensure_connection(max_retries=3)
                    with Consumer(
                        conn.default_channel,
                        queues=[queue],
                        callbacks=[self._on_message],
                        accept=["json"],
                        on_decode_error=self._on_decode_error,
                        prefetch_count=self.batch_size,
                    ):
                        logger.info(
                            "ingesting heartbeats from %s (batch %d, %.0f ms)",
                            self.queue_name,
                            self.batch_size,
                            self.max_wait * 1000,
                        )
                        backoff = 1.0
                        self._loop(conn)
            except broker_errors as exc:
                # Unacked messages of the lost connection go back to the queue on their own.
                self._pending = []
                if self.stopping:
                    break
                logger.warning("broker unavailable (%s); retrying in %.0f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        return self.totals

    def _loop(self, conn: Any) -> None:
        idle_since = time.monotonic()
        while not self.stopping:
            deadline = time.monotonic() + self.max_wait
            while len(self._pending) < self.batch_size and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    conn.drain_events(timeout=remaining)
                except TimeoutError:
                    break
            if self._pending:
                self._flush()
                idle_since = time.monotonic()
            elif self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                logger.info("no heartbeat for %.1f s: exiting", self.idle_exit)
                self.stopping = True
        if self._pending:
            self._flush()

    def _on_message(self, body: Any, message: Any) -> None:
        try:
            data = envelope_of(body, message.headers)
        except _Rejected as exc:
            logger.warning("heartbeat rejected: malformed message: %s", exc)
            self.totals.rejected.append(f"malformed message: {exc}")
            message.ack()
            return
        self._pending.append((message, data))

    def _on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.warning("heartbeat rejected: undecodable message: %s", exc)
        self.totals.rejected.append(f"undecodable message: {exc}")
        message.ack()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if self._apply([data for _, data in batch]):
            for message, _ in batch:
                message.ack()
        else:
            for message, _ in batch:
                message.requeue()

    def _apply(self, datas: list[Any]) -> bool:
        """Ingest one batch; False when it was not applied (the caller requeues it)."""
        try:
            result = self.ingestor.ingest(datas)
            self._note_ingest()
        except Exception as exc:
            # The database is away or broken: the messages go back, and we slow down.
            logger.error(
                "heartbeat batch of %d not applied (%s: %s); requeued, retrying in %.0f s",
                len(datas),
                type(exc).__name__,
                exc,
                self._db_backoff,
            )
            connection.close()
            time.sleep(self._db_backoff)
            self._db_backoff = min(self._db_backoff * 2, 30.0)
            return False
        self._db_backoff = 1.0
        connection.close_if_unusable_or_obsolete()
        self._add(result)
        return True

    def _run_redis(self) -> None:
        """The batch path on a Redis broker (see RedisBatchSource)."""
        import redis

        source = RedisBatchSource(self.broker_url, self.queue_name)
        logger.info(
            "ingesting heartbeats from %s (batch %d, redis)", self.queue_name, self.batch_size
        )
        idle_since, backoff = time.monotonic(), 1.0
        while not self.stopping:
            try:
                deliveries = source.get(self.batch_size)
                backoff = 1.0
            except redis.RedisError as exc:
                logger.warning("broker unavailable (%s); retrying in %.0f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if not deliveries:
                if self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                    logger.info("no heartbeat for %.1f s: exiting", self.idle_exit)
                    break
                time.sleep(self.max_wait)
                continue
            idle_since = time.monotonic()
            self._apply_deliveries(source, deliveries)

    def _apply_deliveries(self, source: RedisBatchSource, deliveries: list[_Delivery]) -> None:
        good: list[_Delivery] = []
        datas: list[Any] = []
        for delivery in deliveries:
            try:
                body, headers = decode_delivery(delivery.raw)
                datas.append(envelope_of(body, headers))
                good.append(delivery)
            except _Rejected as exc:
                logger.warning("heartbeat rejected: malformed message: %s", exc)
                self.totals.rejected.append(f"malformed message: {exc}")
        kept = {d.tag for d in good}
        source.ack([d for d in deliveries if d.tag not in kept])
        if self._apply(datas):
            source.ack(good)
        else:
            source.requeue(good)

    def _note_ingest(self) -> None:
        """Reports are being ingested: the liveness sweep uses this to tell a control-plane
        outage from a fleet outage (at most once a second)."""
        if time.monotonic() - self._last_note >= 1.0:
            services.control_plane_resumed_at(timezone.now())
            self._last_note = time.monotonic()

    def _add(self, result: BatchResult) -> None:
        t = self.totals
        t.received += result.received
        t.verified += result.verified
        t.updated += result.updated
        t.stale += result.stale
        t.came_online += result.came_online
        t.container_updates += result.container_updates
        t.rejected.extend(result.rejected[-100:])
        del t.rejected[:-1000]  # a bounded memory of reasons, for tests and the exit summary
