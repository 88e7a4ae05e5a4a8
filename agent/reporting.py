"""The agent's only way to the control plane: signed ``controlplane.*`` tasks on the
``controlplane`` queue. Reports that matter (operation results, events, inventory) go through
the durable outbox first and are retried with backoff, so a broker outage loses none of them;
heartbeats are sent directly (the next one supersedes a lost one)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.journal import Journal
from agent.protocol import envelope, names
from agent.protocol.schema import Message

logger = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self,
        app: Celery,
        key: Ed25519PrivateKey,
        host_id: str,
        journal: Journal,
        *,
        heartbeat_queue: str = names.HEARTBEAT_QUEUE,
    ) -> None:
        self.app = app
        self.key = key
        self.host_id = host_id
        self.journal = journal
        # The batch consumer's queue by default; names.CONTROLPLANE_QUEUE is the Celery path.
        self.heartbeat_queue = heartbeat_queue
        self._wake = threading.Event()
        self._flushing = threading.Lock()  # outbox items go out once each, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _send(self, kind: str, message: dict[str, Any]) -> None:
        self.app.send_task(
            kind,
            kwargs={"message": message},
            queue=self.heartbeat_queue if kind == names.CP_HEARTBEAT else names.CONTROLPLANE_QUEUE,
            retry=False,
            ignore_result=True,
        )

    def seal(self, kind: str, payload: Message, operation_id: str | None = None) -> dict[str, Any]:
        return envelope.seal(
            self.key, kind=kind, host_id=self.host_id, payload=payload, operation_id=operation_id
        )

    def send_now(self, kind: str, payload: Message) -> bool:
        """Best effort (heartbeats): True when handed to the broker."""
        try:
            self._send(kind, self.seal(kind, payload))
            return True
        except Exception as exc:
            logger.warning("could not send %s: %s", kind, exc)
            return False

    def report(self, kind: str, payload: Message, operation_id: str | None = None) -> None:
        """Durable: journal first, then send (sealed at send time, so a report that waited out
        an outage is not expired on arrival). Sent at once from the calling thread when no
        flush is under way - a result reaches the control plane without a thread hand-off -
        otherwise by the outbox thread, which also retries what could not be sent."""
        self.journal.outbox_put(kind, {"payload": payload.to_dict(), "operation_id": operation_id})
        if self._flushing.acquire(blocking=False):
            try:
                if self._flush_unlocked() or self._thread is None:
                    return
            finally:
                self._flushing.release()
        self._wake.set()

    def flush(self) -> int:
        """Send what the outbox holds, in order; one flush at a time."""
        with self._flushing:
            return self._flush_unlocked()

    def _flush_unlocked(self) -> int:
        from agent.protocol.messages import payload_class

        sent = 0
        for row_id, kind, item in self.journal.outbox_pending():
            payload = payload_class(kind).from_dict(item["payload"])
            try:
                self._send(kind, self.seal(kind, payload, item.get("operation_id")))
            except Exception as exc:
                logger.warning("outbox: %s not sent yet: %s", kind, exc)
                break
            self.journal.outbox_done(row_id)
            sent += 1
        return sent

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(timeout=backoff)
            self._wake.clear()
            try:
                self.flush()
                backoff = 0.5 if not self.journal.outbox_pending(1) else min(backoff * 2, 30.0)
            except Exception:
                logger.exception("outbox loop error")
                backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


class Heartbeater:
    """Sends a heartbeat every ``interval`` seconds; ``build`` makes the payload."""

    def __init__(
        self, reporter: Reporter, interval: float, build: Callable[[int], Message]
    ) -> None:
        self.reporter = reporter
        self.interval = interval
        self.build = build
        self._stop = threading.Event()
        self.seq = int(time.time() * 1000)  # grows across restarts without persisting it

    def beat(self) -> bool:
        self.seq += 1
        return self.reporter.send_now(names.CP_HEARTBEAT, self.build(self.seq))

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.beat()
            except Exception:
                logger.exception("heartbeat failed")
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="heartbeat", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
