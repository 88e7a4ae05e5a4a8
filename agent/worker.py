"""The agent's Celery worker: consumes only ``host.<uuid>``, verifies every command's signed
envelope, runs it idempotently (keyed by operation id) and reports the outcome. Handlers are
thin and call the runtime, image and inventory modules."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from agent import __version__
from agent.config import AgentConfig
from agent.journal import Journal
from agent.protocol import envelope, errors, names
from agent.protocol.errors import EnvelopeError, ProtocolError
from agent.protocol.messages import (
    CollectInventory,
    ContainerAction,
    CreateContainer,
    Heartbeat,
    InventoryReport,
    LogsRequest,
    OperationResult,
    Ping,
    PullImage,
)
from agent.protocol.schema import Message
from agent.reporting import Heartbeater, Reporter

logger = logging.getLogger(__name__)

Handler = Callable[["Agent", Any], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}
# The operation a handler thread is running, for handlers that report progress.
_CURRENT = threading.local()


class CommandFailed(Exception):
    """A permanent failure of a command: reported as failed with a code and a sentence."""

    def __init__(self, code: str, message: str, step: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.step = code, message, step


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


class Agent:
    """Everything one agent process holds: config, keys, journal, reporter, services."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.key = envelope.private_key_from_pem(config.key_file.read_bytes())
        self.cp_key = envelope.public_key_from_text(config.controlplane_public_key)
        self.journal = Journal(state / "journal.sqlite3")
        self.app = make_app(config)
        self.reporter = Reporter(
            self.app,
            self.key,
            config.host_id,
            self.journal,
            heartbeat_queue=config.heartbeat_queue,
        )
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._containers: Any = None
        self._network: Any = None
        self._images: Any = None
        self.last_inventory_hash = ""

    # --- services, created on first use ------------------------------------------------------

    @property
    def containers(self) -> Any:
        if self._containers is None:
            from agent.containers import ContainerService

            self._containers = ContainerService(
                Path(self.config.state_dir) / "containers",
                Path(self.config.runtime_root),
                before_start=self.network.before_start,
                netns_for=self.network.netns_for,
            )
        return self._containers

    @property
    def network(self) -> Any:
        """Bridge, ports and socket activation (``agent.network.integration``)."""
        if self._network is None:
            from agent.network.integration import ContainerNetworking, NetworkSettings

            c = self.config
            self._network = ContainerNetworking(
                Path(c.state_dir) / "network",
                NetworkSettings(
                    bridge=c.network_bridge,
                    subnet=c.network_subnet,
                    nat=c.network_nat,
                    firewall=c.network_firewall,
                ),
            )
        return self._network

    def container_list(self) -> list[Any]:
        """Every container with its address and activation state."""
        return [self.network.decorate(s) for s in self.containers.list()]

    def network_startup(self) -> None:
        """Free the network leftovers of containers that vanished while we were down, and
        arm the socket-activated containers that were waiting for a connection."""
        if not (Path(self.config.state_dir) / "containers").exists():
            return
        statuses = self.containers.list()
        if (Path(self.config.state_dir) / "network").exists():
            self.network.startup({s.id for s in statuses})
        self.network.rearm_waiting(self.containers, statuses)

    @property
    def images(self) -> Any:
        if self._images is None:
            from agent.images import ImageStore

            self._images = ImageStore(Path(self.config.state_dir) / "images")
        return self._images

    # --- commands ------------------------------------------------------------------------

    def execute(self, kind: str, message: Any) -> None:
        """Verify, deduplicate, run and report one command. Never raises."""
        try:
            env, payload = envelope.open_envelope(
                message, self.cp_key, expected_kind=kind, expected_host=self.config.host_id
            )
        except EnvelopeError as exc:
            self._refuse(message, exc)
            return
        except ProtocolError as exc:
            logger.warning("malformed %s command rejected: %s", kind, exc)
            self._refuse_unverifiable(message, errors.ERR_INVALID_MESSAGE, str(exc))
            return
        op_id = env.operation_id or env.nonce
        owner = self.journal.nonce_owner(env.nonce)
        if owner is not None:
            seen = self.journal.operation(op_id)
            if seen is None or seen[0] == "done":
                logger.warning("replayed command %s (operation %s) refused", kind, op_id)
                self._result(
                    op_id,
                    "failed",
                    code=errors.ERR_REPLAYED,
                    error="command refused: this signed command was already received",
                )
                return
            # Received before but never finished: the agent died mid-way; run it again
            # (handlers are idempotent), unless it is running right now in this process.
        with self._running_lock:
            if op_id in self._running:
                return
            self._running.add(op_id)
        try:
            self.journal.nonce_add(env.nonce, op_id, env.expires_at)
            self.journal.operation_set(op_id, kind, "started")
            self._run(kind, op_id, payload)
        finally:
            with self._running_lock:
                self._running.discard(op_id)

    def _run(self, kind: str, op_id: str, payload: Message) -> None:
        fn = HANDLERS.get(kind)
        try:
            if fn is None:
                raise CommandFailed(errors.ERR_INVALID_MESSAGE, f"this agent has no {kind!r}")
            _CURRENT.op_id = op_id
            result = fn(self, payload) or {}
        except CommandFailed as exc:
            self.journal.operation_set(op_id, kind, "done", {"error": exc.message})
            self._result(op_id, "failed", code=exc.code, error=exc.message, step=exc.step)
            return
        except Exception as exc:
            code = getattr(exc, "code", errors.ERR_INTERNAL)
            step = getattr(exc, "step", "")
            logger.exception("operation %s (%s) failed", op_id, kind)
            self.journal.operation_set(op_id, kind, "done", {"error": str(exc)})
            self._result(
                op_id, "failed", code=str(code), error=str(exc) or repr(exc), step=str(step)
            )
            return
        self.journal.operation_set(op_id, kind, "done", result)
        self._result(op_id, "succeeded", result=result)

    def _result(
        self,
        op_id: str,
        status: str,
        *,
        code: str = "",
        error: str = "",
        step: str = "",
        result: dict[str, Any] | None = None,
    ) -> None:
        self.reporter.report(
            names.CP_OPERATION_RESULT,
            OperationResult(
                operation_id=op_id,
                status=status,  # type: ignore[arg-type]
                error_code=code,
                error=error,
                step=step,
                result=result or {},
                finished_at=time.time() if status != "running" else None,
            ),
            operation_id=op_id,
        )

    def progress(self, op_id: str, step: str, **result: Any) -> None:
        self._result(op_id, "running", step=step, result=result)

    def _refuse(self, message: Any, exc: EnvelopeError) -> None:
        if exc.code == errors.ERR_BAD_SIGNATURE:
            # Nothing in an unsigned message can be trusted, not even its operation id.
            logger.warning("command with a bad signature dropped")
            return
        op_id = message.get("operation_id") if isinstance(message, dict) else None
        logger.warning("command refused (%s): %s", exc.code, exc.message)
        if op_id:
            self._result(str(op_id), "failed", code=exc.code, error=f"refused: {exc.message}")

    def _refuse_unverifiable(self, message: Any, code: str, text: str) -> None:
        logger.warning("command refused (%s): %s", code, text)

    # --- reports -------------------------------------------------------------------------

    def heartbeat(self, seq: int) -> Heartbeat:
        from agent.inventory import quick_stats

        stats = quick_stats()
        containers = []
        if self._containers is not None or (Path(self.config.state_dir) / "containers").exists():
            try:
                containers = self.container_list()
            except Exception:
                logger.exception("could not list containers for the heartbeat")
        return Heartbeat(
            seq=seq,
            sent_at=time.time(),
            agent_version=__version__,
            load1=stats.get("load1"),
            memory_total=stats.get("memory_total"),
            memory_available=stats.get("memory_available"),
            containers=containers,
            inventory_hash=self.last_inventory_hash,
        )

    def send_inventory(self, *, force: bool = False) -> InventoryReport:
        from agent.certification import run_host_checks
        from agent.inventory import collect_inventory, inventory_hash

        inventory = collect_inventory()
        inventory["container_network"] = self.network_facts()
        digest = inventory_hash(inventory)
        report = InventoryReport(
            collected_at=time.time(),
            inventory=inventory,
            findings=run_host_checks(inventory),
            inventory_hash=digest,
        )
        if force or digest != self.last_inventory_hash:
            self.reporter.report(names.CP_INVENTORY, report)
            self.last_inventory_hash = digest
        return report

    def network_facts(self) -> dict[str, Any]:
        """The container network section of the inventory: bridge, subnet, firewall backend and
        how many addresses are leased (per-container addresses travel in container statuses)."""
        try:
            facts = dict(self.network.manager.facts())
        except Exception as exc:  # a section degrades; the report still goes
            return {"status": "unknown", "reason": f"{type(exc).__name__}: {exc}"}
        facts.pop("leases", None)
        return facts

    def inventory_loop(self) -> None:
        while True:
            time.sleep(self.config.inventory_interval)
            try:
                self.send_inventory(force=True)
            except Exception:
                logger.exception("inventory collection failed")


# --- handlers ------------------------------------------------------------------------------


@handler(names.AGENT_PING)
def _ping(agent: Agent, msg: Ping) -> dict[str, Any]:
    return {"pong": msg.text, "host": agent.config.name, "agent_version": __version__}


@handler(names.AGENT_INVENTORY_COLLECT)
@handler(names.AGENT_CERTIFICATION_RUN)
def _inventory(agent: Agent, msg: CollectInventory) -> dict[str, Any]:
    report = agent.send_inventory(force=True)
    return {"inventory_hash": report.inventory_hash, "findings": len(report.findings)}


@handler(names.AGENT_CONTAINER_CREATE)
def _create(agent: Agent, msg: CreateContainer) -> dict[str, Any]:
    spec = msg.spec
    layers = None
    if spec.mode == "image" and spec.image is not None:
        record = agent.images.get(spec.image.digest or spec.image.reference)
        if record is None:
            raise CommandFailed(
                errors.ERR_IMAGE,
                f"image {spec.image.reference} is not on this host; pull it first",
                step="image",
            )
        layers = agent.images.layers_for(record)
    if spec.sockets:  # started by the first connection, not now
        status = agent.network.create_activated(agent.containers, spec, layers)
        return {"status": status.to_dict()}
    status = agent.containers.create(spec, layers)
    if msg.start:
        status = agent.containers.start(spec.id)
    return {"status": agent.network.decorate(status).to_dict()}


def _action(name: str) -> Handler:
    def run(agent: Agent, msg: ContainerAction) -> dict[str, Any]:
        svc, net, cid = agent.containers, agent.network, msg.container_id
        activated = bool(svc.exists(cid) and svc.spec(cid).sockets)
        if name in ("start", "restart") and activated:
            if name == "restart":
                net.disarm(cid)
            status = net.rearm(svc, cid)  # armed (again); the next connection starts it
        elif name == "start":
            status = svc.start(cid)
        elif name == "stop":
            net.disarm(cid)  # an armed container stays stopped until started again
            status = svc.stop(cid, msg.timeout)
        elif name == "restart":
            status = svc.restart(cid)
        elif name == "remove":
            armed = net.disarm(cid)  # an armed container only waits: removing it is not forcing
            svc.remove(cid, force=msg.force or armed)
            net.removed(cid)
            return {"removed": cid}
        else:
            return {"stats": svc.stats(cid).to_dict()}
        return {"status": net.decorate(status).to_dict()}

    return run


for _name, _kind in (
    ("start", names.AGENT_CONTAINER_START),
    ("stop", names.AGENT_CONTAINER_STOP),
    ("restart", names.AGENT_CONTAINER_RESTART),
    ("remove", names.AGENT_CONTAINER_REMOVE),
    ("stats", names.AGENT_CONTAINER_STATS),
):
    HANDLERS[_kind] = _action(_name)


@handler(names.AGENT_CONTAINER_LOGS)
def _logs(agent: Agent, msg: LogsRequest) -> dict[str, Any]:
    return {"lines": agent.containers.logs(msg.container_id, tail=msg.tail, since=msg.since)}


PROGRESS_EVERY_S = 0.5


def _progress_reporter(agent: Agent) -> Callable[[int, int], None]:
    """A pull progress callback that reports bytes done/total at most every half second (and
    when done), so a large pull shows movement without flooding the control plane."""
    op_id = getattr(_CURRENT, "op_id", None)
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if op_id is None or (now - last[0] < PROGRESS_EVERY_S and done < total):
            return
        last[0] = now
        agent.progress(op_id, "pull", done=done, total=total)

    return report


def _image_tags(reference: str) -> list[str]:
    """The tag of a reference (``name:tag`` or ``name:tag@digest``), for the unique-tag check."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return [last.split(":", 1)[1]] if ":" in last else []


def _image_checks(agent: Agent, record: Any, reference: str) -> list[dict[str, Any]]:
    """Certification findings of a pulled image, over a mount-free merged view of its layers
    (hard links in a scratch dir beside the store, removed afterwards)."""
    from agent.certification import run_image_checks
    from agent.certification.image_rootfs import merged_rootfs

    layers = agent.images.layers_for(record)
    with merged_rootfs(layers, Path(agent.config.state_dir) / "image-checks") as rootfs:
        findings = run_image_checks(
            rootfs, dict(record.config), list(record.layers), _image_tags(reference)
        )
    return [f.to_dict() for f in findings]


@handler(names.AGENT_IMAGE_PULL)
def _pull(agent: Agent, msg: PullImage) -> dict[str, Any]:
    """Pull (by digest when pinned), report byte progress, then certify the image: the
    findings travel in the result and the control plane judges them under its policy."""
    reference = (
        msg.image.digest and f"{msg.image.reference.split('@')[0]}@{msg.image.digest}"
    ) or msg.image.reference
    record = agent.images.pull(
        reference,
        registry_url=msg.registry_url,
        auth=msg.auth,
        progress=_progress_reporter(agent),
    )
    try:
        findings = _image_checks(agent, record, msg.image.reference)
        check_error = ""
    except Exception as exc:  # the pull itself succeeded; the verdict becomes unknown
        logger.exception("image checks of %s failed", record.digest)
        findings, check_error = [], f"{type(exc).__name__}: {exc}"
    return {
        "digest": record.digest,
        "size": record.size,
        "config": record.config,
        "layers": list(record.layers),
        "platform": record.platform,
        "labels": dict(record.labels),
        "findings": findings,
        "check_error": check_error,
    }


@handler(names.AGENT_IMAGE_GC)
def _gc(agent: Agent, msg: Ping) -> dict[str, Any]:
    """Collect every image but those the control plane says to keep (``text`` is a JSON list
    of references or digests: the protocol's gc payload is a Ping)."""
    import json

    try:
        keep = json.loads(msg.text) if msg.text not in ("", "ping") else []
    except ValueError:
        raise CommandFailed(errors.ERR_INVALID_MESSAGE, "gc: text must be a JSON list") from None
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise CommandFailed(errors.ERR_INVALID_MESSAGE, "gc: text must be a JSON list of str")
    result = agent.images.gc(set(keep))
    return {
        "removed_images": list(result.removed_images),
        "removed_layers": len(result.removed_layers),
        "freed_bytes": result.freed_bytes,
    }


# --- the Celery app ------------------------------------------------------------------------


def make_app(config: AgentConfig) -> Celery:
    # Celery prefers CELERY_BROKER_URL from the environment over any configuration; the agent
    # talks only to the broker its enrollment gave it, whatever its environment says.
    for variable in (
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "CELERY_BROKER_WRITE_URL",
        "CELERY_BROKER_READ_URL",
    ):
        os.environ.pop(variable, None)
    app = Celery("corral-agent", set_as_current=False)
    app.conf.update(
        broker_url=config.broker_url,
        broker_transport_options=config.broker_transport_options or {"visibility_timeout": 120},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=900,
        task_soft_time_limit=840,
        task_queues=[Queue(config.queue)],
        task_default_queue=config.queue,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def register_tasks(agent: Agent) -> None:
    for kind in names.AGENT_TASKS:

        def task(message: Any, _kind: str = kind) -> None:
            agent.execute(_kind, message)

        agent.app.task(name=kind, ignore_result=True, acks_late=True, reject_on_worker_lost=True)(
            task
        )


def run(config: AgentConfig, *, loglevel: str = "INFO") -> None:
    """Start the agent: outbox, heartbeats, first inventory, then consume host.<uuid>."""
    # Until Celery installs its own handlers (after the first inventory), SIGTERM must still
    # stop the agent cleanly: containers and their monitors are not ours to take down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    agent = Agent(config)
    register_tasks(agent)
    try:
        agent.network_startup()
    except Exception:
        logger.exception("network start-up clean-up failed")
    agent.reporter.start()
    Heartbeater(agent.reporter, config.heartbeat_interval, agent.heartbeat).start()
    try:
        agent.send_inventory(force=True)
    except Exception:
        logger.exception("first inventory failed")
    threading.Thread(target=agent.inventory_loop, name="inventory", daemon=True).start()
    agent.app.worker_main(
        [
            "worker",
            "-Q",
            config.queue,
            "--pool",
            "threads",
            "-c",
            str(config.concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            loglevel,
            "-n",
            f"agent.{config.host_id}@%h",
        ]
    )
