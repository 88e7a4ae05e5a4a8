"""``manage.py ingest_heartbeats``: the dedicated heartbeat consumer.

Drains the ``controlplane.heartbeats`` queue in batches (verify every beat, one bulk write per
batch, ack after commit; hosts/ingest.py does the batch). On a Redis broker a batch is taken
and acked in one round trip each; other brokers (the filesystem transport of ``make run``) go
through a plain kombu consumer. Run one or two next to the control-plane worker. Like every
worker, it also runs the liveness sweep. SIGTERM finishes the current batch and exits.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone
from django.utils.module_loading import import_string

from agent.protocol import names
from hosts import services
from hosts.ingest import HEARTBEAT_QUEUE, BatchResult, HeartbeatIngestor, MessageRejected

# The command is a composition root (like config/): hosts must not import containers, so the
# container part of a heartbeat is named here and resolved at start.
CONTAINERS_HOOK = "containers.services.containers_apply_heartbeat"

logger = logging.getLogger(__name__)


def envelope_of(body: Any, headers: dict[str, Any] | None) -> Any:
    """The ``message`` kwarg of a Celery heartbeat task (protocol 2: ``[args, kwargs, embed]``
    with the task name in the headers; protocol 1: a dict). Raises MessageRejected."""
    headers = headers or {}
    task = headers.get("task")
    if isinstance(body, dict) and task is None:  # Celery message protocol 1
        task, kwargs = body.get("task"), body.get("kwargs")
    elif isinstance(body, list | tuple) and len(body) == 3:
        kwargs = body[1]
    else:
        raise MessageRejected("message body is not a Celery task (expected [args, kwargs, embed])")
    if task != names.CP_HEARTBEAT:
        raise MessageRejected(f"task {task!r} is not {names.CP_HEARTBEAT!r}")
    if not isinstance(kwargs, dict) or "message" not in kwargs:
        raise MessageRejected("task kwargs have no 'message'")
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
        # kombu routes restored messages through the queue's binding: make sure it exists.
        from kombu import Connection, Exchange, Queue

        with Connection(url) as conn:
            Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel).declare()
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
            pipe.hdel(self.unacked_key, *tags)
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.execute()

    def requeue(self, deliveries: Sequence[_Delivery]) -> None:
        """Back to the consuming end of the queue, in their order, and no longer unacked."""
        if deliveries:
            tags = [d.tag for d in deliveries]
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(self.queue, *[d.raw for d in reversed(deliveries)])
            pipe.hdel(self.unacked_key, *tags)
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.execute()


def decode_delivery(raw: bytes) -> tuple[Any, dict[str, Any]]:
    """(body, headers) of a kombu message as stored in Redis. Raises MessageRejected."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        if message.get("content-type") != "application/json":
            raise MessageRejected(f"content type {message.get('content-type')!r} is not JSON")
        return json.loads(body), message.get("headers") or {}
    except MessageRejected:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MessageRejected(f"undecodable message: {exc}") from None


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
        self._last_sweep = 0.0
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
            broker_errors: tuple[type[BaseException], ...] = (
                *conn.connection_errors,
                *conn.channel_errors,
                OSError,
            )
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
            self._housekeeping()
        if self._pending:
            self._flush()

    def _on_message(self, body: Any, message: Any) -> None:
        try:
            data = envelope_of(body, message.headers)
        except MessageRejected as exc:
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
                self._housekeeping()
                time.sleep(self.max_wait)
                continue
            idle_since = time.monotonic()
            self._apply_deliveries(source, deliveries)
            self._housekeeping()

    def _apply_deliveries(self, source: RedisBatchSource, deliveries: list[_Delivery]) -> None:
        good: list[_Delivery] = []
        datas: list[Any] = []
        for delivery in deliveries:
            try:
                body, headers = decode_delivery(delivery.raw)
                datas.append(envelope_of(body, headers))
                good.append(delivery)
            except MessageRejected as exc:
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

    def _housekeeping(self) -> None:
        """The liveness sweep (online -> unknown -> offline), at most every
        LIVENESS_CHECK_EVERY seconds, here as in every worker and in beat: where heartbeats
        are read is where a missing one is noticed first, and offline detection never hangs
        on one beat process. A failed sweep is logged; the next one runs on time."""
        mono = time.monotonic()
        if mono - self._last_sweep < float(settings.CORRAL["LIVENESS_CHECK_EVERY"]):
            return
        self._last_sweep = mono
        try:
            services.hosts_liveness_sweep()
        except Exception as exc:
            logger.error("liveness sweep failed (%s: %s)", type(exc).__name__, exc)
            connection.close()

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


class Command(BaseCommand):
    help = "Consume heartbeats in batches from the heartbeat queue and apply them in bulk."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", default=HEARTBEAT_QUEUE, help="queue to consume")
        parser.add_argument(
            "--batch-size", type=int, default=500, help="most messages per batch (500)"
        )
        parser.add_argument(
            "--max-wait-ms",
            type=float,
            default=200.0,
            help="longest wait to fill a batch before applying what arrived (200)",
        )
        parser.add_argument(
            "--missing-check-every",
            type=float,
            default=300.0,
            help="seconds between checks of a host for containers it no longer reports (300); "
            "a host whose container list changed is checked at once. Each check is a query, so "
            "checking every beat would cost one query per beat at fleet scale",
        )
        parser.add_argument(
            "--exit-when-idle",
            type=float,
            default=None,
            help="exit after this many seconds without a message (benchmarks, one-shot drains)",
        )
        parser.add_argument(
            "--broker-url", default=None, help="default: the control plane's CELERY_BROKER_URL"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if options["max_wait_ms"] <= 0:
            raise CommandError("--max-wait-ms must be positive")
        every = options["missing_check_every"]
        if every <= 0:
            raise CommandError("--missing-check-every must be positive")
        broker_url = options["broker_url"] or settings.CELERY_BROKER_URL
        ingestor = HeartbeatIngestor(
            containers=import_string(CONTAINERS_HOOK), missing_check_every=every
        )
        consumer = HeartbeatConsumer(
            broker_url,
            ingestor=ingestor,
            queue=options["queue"],
            batch_size=options["batch_size"],
            max_wait=options["max_wait_ms"] / 1000.0,
            idle_exit=options["exit_when_idle"],
            transport_options=dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})),
        )
        consumer.install_signal_handlers()
        totals = consumer.run()
        self.stdout.write(
            f"heartbeats: received={totals.received} verified={totals.verified} "
            f"hosts_updated={totals.updated} stale={totals.stale} "
            f"came_online={totals.came_online} rejected={len(totals.rejected)}"
        )
