"""The real control plane stack for end-to-end tests: a private Redis reachable from test
hosts, the control-plane Celery worker, and agents enrolled over HTTP and running in network
namespaces (or in the root namespace), each its own host.

Fixtures: ``netbridge`` (session), ``broker`` (session: private redis-server on loopback and the
bridge), ``stack`` (function: needs the live server and a transactional database)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu import pools

from tests.support import netns
from tests.support.mounts import unmount_under
from tests.support.procs import PYTHON, REPO, Proc, free_port, wait_for, wait_port


@dataclass
class Broker:
    port: int
    bridge: netns.Bridge

    @property
    def local_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def agent_url(self) -> str:
        return f"redis://{self.bridge.address}:{self.port}/0"

    def flush(self) -> None:
        import redis

        redis.Redis(host="127.0.0.1", port=self.port).flushall()


@pytest.fixture(scope="session")
def netbridge() -> Iterator[netns.Bridge]:
    with netns.bridge() as br:
        yield br


@pytest.fixture(scope="session")
def broker(netbridge: netns.Bridge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    port = free_port()
    logs = tmp_path_factory.mktemp("redis")
    proc = Proc(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            f"127.0.0.1 {netbridge.address}",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(logs),
        ],
        log_dir=logs,
    )
    try:
        wait_port("127.0.0.1", port)
        yield Broker(port=port, bridge=netbridge)
    finally:
        proc.stop()


@dataclass
class Agent:
    name: str
    host_id: str
    config_path: Path
    state_dir: Path
    host: netns.NetnsHost | None
    proc: Proc | None = None

    @property
    def runtime_root(self) -> Path:
        return self.state_dir / "runtime"


@dataclass
class Stack:
    live_url: str
    broker: Broker
    db_url: str
    work: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    _hosts: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start_worker(self, name: str = "cp-worker", concurrency: int = 2) -> Proc:
        proc = Proc(
            name,
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
                str(concurrency),
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"{name}@%h",
            ],
            env=self.env,
            log_dir=self.work,
        )
        self.procs.append(proc)
        if not any(p.name.startswith("ingest") for p in self.procs):
            self.start_ingest()
        wait_for(lambda: "ready" in proc.log() or not proc.alive(), 30, f"{name} ready")
        assert proc.alive(), proc.log()
        return proc

    def start_ingest(self, name: str = "ingest") -> Proc:
        """The heartbeat consumer (agents send their beats to its queue), as deployed beside
        the worker; it polls an empty queue every 50 ms."""
        proc = Proc(
            name,
            [PYTHON, "manage.py", "ingest_heartbeats", "--max-wait-ms", "50"],
            env=self.env,
            log_dir=self.work,
        )
        self.procs.append(proc)
        return proc

    def new_host(self, index: int) -> netns.NetnsHost:
        return self._hosts.enter_context(netns.netns_host(self.broker.bridge, index))

    def enroll(
        self,
        name: str,
        *,
        host: netns.NetnsHost | None = None,
        token: str | None = None,
        state_dir: Path | None = None,
    ) -> Agent:
        from agent.enroll import enroll
        from hosts.services import enrollment_token_create

        if token is None:
            _, token = enrollment_token_create(note=f"test {name}")
        state = state_dir or (self.work / f"agent-{name}")
        config_path = state / "agent.json"
        config = enroll(
            server=self.live_url,
            token=token,
            config_path=config_path,
            state_dir=state,
            name=name,
            address=host.address if host else "127.0.0.1",
            broker_url=self.broker.agent_url if host else self.broker.local_url,
            extra={"runtime_root": str(state / "runtime")},
        )
        agent = Agent(
            name=name, host_id=config.host_id, config_path=config_path, state_dir=state, host=host
        )
        self.agents.append(agent)
        return agent

    def run_agent(self, agent: Agent) -> Proc:
        argv = [PYTHON, "-m", "agent", "--config", str(agent.config_path), "run"]
        if agent.host is not None:
            argv = agent.host.exec_argv(argv)
        proc = Proc(f"agent-{agent.name}", argv, env=self.env, log_dir=self.work)
        agent.proc = proc
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self._hosts.close()


def database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgresql://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def point_celery_at(url: str) -> None:
    """Make this process's control-plane Celery app publish to ``url`` (Celery prefers the
    CELERY_BROKER_URL environment variable; its connection pools are dropped)."""
    from config.celery import app

    if url:
        os.environ["CELERY_BROKER_URL"] = url
    else:
        os.environ.pop("CELERY_BROKER_URL", None)
    app.conf.broker_url = url or None
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()  # kombu's process-wide connection and producer pools


@pytest.fixture
def stack(
    transactional_db: Any,
    live_server: Any,
    broker: Broker,
    settings: Any,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """A control plane with short liveness thresholds; tests start workers and agents."""
    marker = request.node.get_closest_marker("corral")
    overrides = dict(marker.kwargs) if marker else {}
    corral = {
        **settings.CORRAL,
        "HEARTBEAT_INTERVAL": 0.5,
        "UNKNOWN_AFTER": 3.0,
        "OFFLINE_AFTER": 6.0,
        "STARTUP_GRACE": 0.0,
        "LIVENESS_CHECK_EVERY": 0.5,
        **overrides,
    }
    settings.CORRAL = corral
    broker.flush()
    work = Path(tempfile.mkdtemp(prefix="corral-stack-"))
    env = {
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker.local_url,
        "CORRAL_HEARTBEAT_INTERVAL": str(corral["HEARTBEAT_INTERVAL"]),
        "CORRAL_UNKNOWN_AFTER": str(corral["UNKNOWN_AFTER"]),
        "CORRAL_OFFLINE_AFTER": str(corral["OFFLINE_AFTER"]),
        "CORRAL_STARTUP_GRACE": str(corral["STARTUP_GRACE"]),
        "CORRAL_LIVENESS_CHECK_EVERY": str(corral["LIVENESS_CHECK_EVERY"]),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    st = Stack(
        live_url=live_server.url, broker=broker, db_url=env["DATABASE_URL"], work=work, env=env
    )
    previous_broker = os.environ.get("CELERY_BROKER_URL", "")
    point_celery_at(broker.local_url)
    try:
        yield st
    finally:
        st.close()
        point_celery_at(previous_broker)
        unmount_under(work)  # network namespaces the agents pinned for containers left behind
        if os.environ.get("CORRAL_KEEP_LOGS"):
            print(f"stack logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
