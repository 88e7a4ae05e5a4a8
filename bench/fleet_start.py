"""Fleet start latency: REST API request -> container observed ``running`` in the database,
beside ``podman run -d`` of a comparable container on this machine, interleaved sample by sample.

Run as root: ``.venv/bin/python bench/fleet_start.py [--containers 100] [--profile]``; with
``CORRAL_BENCH_KEEP=1`` the work dir (every process's log) is kept. Production settings: DEBUG
off, so no query log and no debug cursor.

The corral side is the whole real path: a scratch PostgreSQL database, a private Redis, the
control-plane Celery worker, two agents enrolled over HTTP and running in network namespaces
(the e2e test stack's classes, used outside pytest), and gunicorn with the deploy config. Each
sample is one ``POST /api/v1/containers/`` over a new HTTP connection with an API token (a host
container running ``sleep``, pinned to the two hosts in turn) until the row shows
``observed_state == running``: HTTP + auth + API + on_commit publish -> Redis -> agent consume
-> create + start -> signed result -> worker -> database. ``--profile`` sends the requests
in-process instead (Django's test client), so cProfile sees the API's own code.

The peer is ``podman run -d --rm --network=none --cgroup-manager=cgroupfs`` of a busybox
rootfs running ``sleep`` (returns once the container runs). Debian's crun (podman's runtime)
refuses this host's hybrid cgroup layout, so podman runs in a helper process whose private
mount namespace shows only the cgroup v1 hierarchies (as bench/runtime_start.py does).
Podman's rlimits are capped at ours (--ulimit), which it otherwise fails to raise.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import json
import os
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PG = "postgresql://postgres@127.0.0.1:5432"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- the podman peer: a helper process in a cgroup-v1-only mount view ------------------------


def podman_helper(rootfs: str) -> None:
    """Read 'run' lines; run one podman container each and print its latency (ms) as JSON."""
    sys.path.insert(0, str(REPO / "bench"))
    from runtime_start import v1_only_view

    v1_only_view()
    nofile = os.sysconf("SC_OPEN_MAX")
    ids: list[str] = []
    base = ["podman", "run", "-d", "--rm", "--network=none", "--cgroup-manager=cgroupfs"]
    base += ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
    try:
        for line in sys.stdin:
            if line.strip() != "run":
                break
            started = time.perf_counter()
            r = subprocess.run([*base, "--rootfs", rootfs, "/bin/sleep", "600"],
                               capture_output=True, text=True, check=False)  # fmt: skip
            ms = (time.perf_counter() - started) * 1000
            if r.returncode == 0:
                ids.append(r.stdout.strip())
            print(json.dumps({"ms": ms, "ok": r.returncode == 0, "err": r.stderr[-300:]}),
                  flush=True)  # fmt: skip
    finally:
        for chunk in range(0, len(ids), 20):
            subprocess.run(["podman", "rm", "-f", "-t", "0", *ids[chunk : chunk + 20]],
                           capture_output=True, check=False)  # fmt: skip


def busybox_rootfs(path: Path) -> None:
    (path / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", path / "bin" / "busybox")
    for name in ("sh", "sleep", "true"):
        (path / "bin" / name).symlink_to("busybox")
    for name in ("proc", "sys", "dev", "etc", "tmp"):
        (path / name).mkdir()


class Podman:
    def __init__(self, rootfs: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--podman-helper", str(rootfs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def sample(self) -> float | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if not reply["ok"]:
            print("podman failed:", reply["err"], file=sys.stderr)
            return None
        return float(reply["ms"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=300)


# --- the corral stack ----------------------------------------------------------------------


def scratch_database() -> str:
    name = f"corral_bench_{secrets.token_hex(4)}"
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    return name


def drop_database(name: str) -> None:
    sql = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    subprocess.run(["psql", f"{PG}/postgres", "-qc", sql], check=False)


def serve_http() -> tuple[str, Any]:
    """The control plane's WSGI app on loopback (enrollment is HTTP)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def wait_running(cid: str, timeout: float = 60) -> float:
    from containers.models import Container

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Container.objects.filter(pk=cid).values_list("observed_state", flat=True).first()
        if state == "running":
            return time.time()
        if state in ("failed", "exited"):
            raise RuntimeError(f"container {cid} is {state}")
        time.sleep(0.001)
    raise TimeoutError(f"container {cid} not running after {timeout} s")


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="corral-fleet-bench-"))
    db = scratch_database()
    from cryptography.fernet import Fernet

    # Production settings (DEBUG off: no query log, no debug cursor), over plain HTTP.
    os.environ.update(
        DATABASE_URL=f"{PG}/{db}",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        CORRAL_FERNET_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="*",
        SECURE_SSL_REDIRECT="0",
        CORRAL_VAR_DIR=str(work / "var"),
        DJANGO_SETTINGS_MODULE="config.settings",
        CORRAL_HEARTBEAT_INTERVAL="2",
    )
    import django

    django.setup()
    from django.core.management import call_command

    from tests.support import netns
    from tests.support.procs import PYTHON, Proc, free_port, wait_for, wait_port
    from tests.support.stack import Broker, Stack, point_celery_at

    call_command("migrate", verbosity=0)
    podman = None
    with contextlib.ExitStack() as cleanup:
        if not os.environ.get("CORRAL_BENCH_KEEP"):
            cleanup.callback(shutil.rmtree, work, True)
        cleanup.callback(drop_database, db)
        url, server = serve_http()
        cleanup.callback(server.shutdown)
        bridge = cleanup.enter_context(netns.bridge())
        port = free_port()
        redis_dir = work / "redis"
        redis_dir.mkdir(parents=True)
        redis = Proc("redis", ["redis-server", "--port", str(port), "--bind",
                               f"127.0.0.1 {bridge.address}", "--save", "", "--appendonly", "no",
                               "--protected-mode", "no", "--dir", str(redis_dir)],
                     log_dir=redis_dir)  # fmt: skip
        cleanup.callback(redis.stop)
        wait_port("127.0.0.1", port)
        broker = Broker(port=port, bridge=bridge)
        env = {
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "CELERY_BROKER_URL": broker.local_url,
            "CORRAL_HEARTBEAT_INTERVAL": "2",
            **{k: os.environ[k] for k in ("DEBUG", "SECRET_KEY", "CORRAL_FERNET_KEYS")},
            **{k: os.environ[k] for k in ("ALLOWED_HOSTS", "SECURE_SSL_REDIRECT")},
            "CORRAL_VAR_DIR": str(work / "var"),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        stack = Stack(live_url=url, broker=broker, db_url=env["DATABASE_URL"], work=work, env=env)
        cleanup.callback(stack.close)
        point_celery_at(broker.local_url)
        stack.start_worker(concurrency=2)
        agents = [stack.enroll(f"bench{i}", host=stack.new_host(i)) for i in range(2)]
        for agent in agents:
            stack.run_agent(agent)
        from hosts.models import Host

        for agent in agents:
            wait_for(lambda a=agent: Host.objects.filter(pk=a.host_id, status="online").exists(),
                     120, f"{agent.name} online")  # fmt: skip
        client = api_client()
        if not args.profile:  # the real front door: gunicorn with the deploy config, a token
            web_port = free_port()
            web = Proc("gunicorn", [str(Path(PYTHON).with_name("gunicorn")), "-c",
                                    str(REPO / "deploy" / "gunicorn.conf.py"), "config.wsgi"],
                       env={**env, "CORRAL_WEB_BIND": f"127.0.0.1:{web_port}",
                            "CORRAL_WEB_WORKERS": "2", "CORRAL_WEB_LOG_LEVEL": "warning"},
                       log_dir=work)  # fmt: skip
            cleanup.callback(web.stop)
            wait_port("127.0.0.1", web_port)
            client = HttpClient(web_port, client.token)
        rootfs = work / "busybox-rootfs"
        busybox_rootfs(rootfs)
        podman = Podman(rootfs)
        cleanup.callback(podman.close)
        profiler = cProfile.Profile() if args.profile else None
        samples = measure(client, [a.host_id for a in agents], podman, args.containers, profiler)
        report(samples, PYTHON)
        if profiler is not None:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(r"corral|containers/|hosts/|config/", 40)
            stats.sort_stats("tottime").print_stats(25)
            libraries = r"rest_framework|django/db/models/query.py|psycopg/connection"
            stats.sort_stats("cumulative").print_stats(libraries, 25)
        remove_all(client)


def api_client() -> Any:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from containers.models import Membership, Project

    user = get_user_model().objects.create_user("bench", password=secrets.token_hex(8))
    project = Project.objects.create(slug="bench", name="Bench", max_containers=1000)
    Membership.objects.create(project=project, user=user, role="operator")
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # in-process requests
    client = APIClient()
    client.force_authenticate(user)
    client.token = Token.objects.create(user=user).key
    return client


class HttpClient:
    """POSTs over a fresh TCP connection each time, as a command-line client would, with the
    user's API token: the HTTP server, authentication and middleware are in the timing."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any], format: str = "json") -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, json.dumps(body), self.headers)
            reply = conn.getresponse()
            return HttpReply(reply.status, reply.read())
        finally:
            conn.close()


class HttpReply:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


def measure(
    client: Any, hosts: list[str], podman: Podman, count: int, profiler: Any = None
) -> dict[str, list[float]]:
    """Interleaved: one corral container, then one podman container, ``count`` times."""
    out: dict[str, list[float]] = {
        "corral": [], "api": [], "agent": [], "report": [], "result": [], "podman": []
    }  # fmt: skip
    for i in range(count + 2):  # the first two (one per host) warm the agents' zygotes
        body = {"project": "bench", "name": f"c{i}", "mode": "host", "network_mode": "none",
                "command": ["/bin/sleep", "600"], "host": hosts[i % 2]}  # fmt: skip
        t0 = time.time()
        if profiler is not None and i >= 2:
            profiler.enable()
        response = client.post("/api/v1/containers/", body, format="json")
        if profiler is not None:
            profiler.disable()
        t_api = time.time()
        assert response.status_code == 201, response.content[:500]
        cid = response.json()["id"]
        t_db = wait_running(cid)
        started, applied = started_at(cid)
        peer = podman.sample()
        if i < 2:
            continue
        out["corral"].append((t_db - t0) * 1000)
        out["api"].append((t_api - t0) * 1000)
        if started is not None:
            out["agent"].append((started - t_api) * 1000)
            out["report"].append((t_db - started) * 1000)
            if applied is not None:
                out["result"].append((applied - started) * 1000)
        if peer is not None:
            out["podman"].append(peer)
    return out


def started_at(cid: str) -> tuple[float | None, float | None]:
    """The runtime's start time (agent clock = this machine's) from the create result, and
    when the control plane applied that result (its clock: the same machine's)."""
    from hosts.models import Operation

    op = Operation.objects.filter(target_id=cid).order_by("created_at").first()
    status = (op.result or {}).get("status", {}) if op else {}
    value = status.get("started_at")
    applied = op.finished_at.timestamp() if op and op.finished_at else None
    return (float(value) if value else None), applied


def report(samples: dict[str, list[float]], python: str) -> None:
    load = os.getloadavg()[0]
    print(f"\nfleet start, {len(samples['corral'])} containers on 2 netns hosts "
          f"(load average {load:.1f})")  # fmt: skip
    print(f"{'':44} {'p50 ms':>8} {'p95 ms':>8} {'mean':>8} {'max':>8}")
    rows = [
        ("corral API -> observed running", "corral"),
        ("  API + on_commit publish", "api"),
        ("  -> agent started it (queue+create+start)", "agent"),
        ("  -> report, worker, database", "report"),
        ("     of which: start -> result applied", "result"),
        ("podman run -d (peer)", "podman"),
    ]
    for label, key in rows:
        values = samples[key]
        if values:
            print(f"{label:44} {pct(values, 50):8.1f} {pct(values, 95):8.1f} "
                  f"{statistics.fmean(values):8.1f} {max(values):8.1f}")  # fmt: skip
    if samples["podman"] and samples["corral"]:
        p50 = pct(samples["corral"], 50) / pct(samples["podman"], 50)
        p95 = pct(samples["corral"], 95) / pct(samples["podman"], 95)
        print(f"ratio corral/podman: p50 {p50:.2f}x  p95 {p95:.2f}x")
    print(f"targets: p50 < 100 ms, p95 < 250 ms ({python})")


def remove_all(client: Any) -> None:
    from containers.models import Container

    ops = []
    for cid in Container.objects.filter(removed_at__isnull=True).values_list("pk", flat=True):
        r = client.post(f"/api/v1/containers/{cid}/remove/", {"force": True}, format="json")
        ops.append(r.json()["id"])
    from hosts.models import Operation

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not Operation.objects.filter(pk__in=ops, status__in=("pending", "sent", "running")):
            break
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--profile", action="store_true", help="cProfile the API requests")
    parser.add_argument("--podman-helper", metavar="ROOTFS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.podman_helper:
        podman_helper(args.podman_helper)
        return
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces, cgroups)")
    run(args)


if __name__ == "__main__":
    main()
