"""Heartbeat ingestion in batches: verify every beat, then write a whole batch at once.

A fleet of 20,000 hosts beating every 10 s sends 2,000 heartbeats a second. Handling each as
its own Celery task costs a task dispatch, a host lookup and an UPDATE per beat; here a batch
of beats is verified one by one (Ed25519 per beat, against the key of the host the envelope
names, so a host can only speak for itself), collapsed to the newest beat per host, and
applied with one bulk UPDATE on PostgreSQL. Rows change in place: no row is added per beat.

:class:`HeartbeatIngestor` is shared by the dedicated consumer (``manage.py
ingest_heartbeats``) and the ``controlplane.heartbeat.report``
Celery task, which hands it a batch of one.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
from hosts.models import HOST_LARGE_FIELDS, Host

logger = logging.getLogger(__name__)

HEARTBEAT_QUEUE = names.HEARTBEAT_QUEUE
BIGINT_MAX = 2**63 - 1


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
        except MessageRejected as exc:
            rejected.append(str(exc))
    return beats, rejected


class MessageRejected(Exception):
    """A message that is not applied; ``str()`` is the reason that is logged."""


def _public_keys(ids: set[str]) -> dict[str, str]:
    """{host id: public key text} of enrolled hosts, in one query (no model instances: only
    the few hosts that change status or containers are loaded as such)."""
    if not ids:
        return {}
    rows = Host.objects.filter(pk__in=ids).exclude(public_key="").values_list("id", "public_key")
    return {str(pk): key for pk, key in rows}


def hosts_by_id(ids: Iterable[str]) -> dict[str, Host]:
    return {str(h.pk): h for h in Host.objects.filter(pk__in=set(ids)).defer(*HOST_LARGE_FIELDS)}


def _verify_one(data: Any, keys: dict[str, str], now: float | None) -> Beat:
    kind = names.CP_HEARTBEAT
    raw_id = data.get("host_id") if isinstance(data, dict) else None
    if not isinstance(raw_id, str):
        raise MessageRejected("report has no host_id")
    key_text = keys.get(raw_id) if _host_id_of(data) else None
    if not key_text:
        raise MessageRejected(f"report from unknown or unenrolled host {raw_id!r}")
    try:
        key = host_public_key(key_text)
        _, message = envelope.open_envelope(
            data, key, expected_kind=kind, expected_host=raw_id, now=now
        )
    except ProtocolError as exc:
        raise MessageRejected(f"{kind} claiming host {raw_id}: {exc}") from None
    if not isinstance(message, Heartbeat):  # pragma: no cover - the kind maps to Heartbeat
        raise MessageRejected(f"{kind} claiming host {raw_id}: payload is not a heartbeat")
    problem = _column_problem(message)
    if problem:
        raise MessageRejected(f"{kind} claiming host {raw_id}: {problem}")
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
        return qn(meta.get_field(name).column)  # type: ignore[union-attr,arg-type]

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
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret

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
            last = self._last_missing_check.get(beat.host_id)
            if last is None:
                # A host first seen gets its first check at a random point of the interval:
                # a consumer (re)started under a large fleet would otherwise run one query
                # per host at once (20,000 at 20,000 hosts) before its first batches.
                last = self._last_missing_check[beat.host_id] = mono - self._rng.uniform(0, every)
            check_missing = mono - last >= every
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
