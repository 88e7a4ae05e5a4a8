"""The real agent on this host enrolls with the real control plane on the host (HTTP through
the ``corral.server`` forward), then runs: its first inventory and heartbeats travel through
the broker forward to the control plane's worker. The harness answers on the broker once the
control plane has recorded them (``corral:cp-saw:<token>``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from typing import Any

import redis

from scenario.common import STATE_DIR, Context, Skip, run
from scenario.platform import cmdline

AGENT_NAME = "corral-guest"
WAIT_FOR_HOST_S = 150


def enroll_and_report(ctx: Context) -> str:
    args = cmdline()
    if "enroll_token" not in args or "server" not in args:
        raise Skip("this run has no control plane (the harness passes corral.enroll_token)")
    state = STATE_DIR / "agent"
    shutil.rmtree(state, ignore_errors=True)
    config = state / "agent.json"
    agent = [sys.executable, "-m", "agent", "--config", str(config)]
    enrolled = run(
        [
            *agent, "enroll", "--server", f"http://{args['server']}",
            "--token", args["enroll_token"], "--name", AGENT_NAME, "--address", "10.0.2.15",
            "--state-dir", str(state), "--broker-url", f"redis://{args['redis']}/0",
        ],
        timeout=120,
    )  # fmt: skip
    ctx.log(f"enroll rc={enrolled.returncode}: {(enrolled.stdout + enrolled.stderr).strip()}")
    assert enrolled.returncode == 0, f"enroll failed: {enrolled.stderr.strip()[-300:]}"
    rhost, rport = args["redis"].rsplit(":", 1)
    broker = redis.Redis(host=rhost, port=int(rport), socket_timeout=15)
    log_path = state / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # the agent itself, as the deployed unit runs it
            [*agent, "run"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    start = time.monotonic()
    seen: Any = None
    try:
        while time.monotonic() - start < WAIT_FOR_HOST_S and proc.poll() is None:
            seen = broker.get(f"corral:cp-saw:{args['token']}")
            if seen:
                break
            time.sleep(1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    waited = time.monotonic() - start
    for line in log_path.read_text(errors="replace").splitlines()[-12:]:
        ctx.log(f"agent: {line[:300]}")
    assert seen, f"the control plane never recorded the agent's reports ({waited:.0f}s)"
    ctx.log(f"control plane recorded: {seen.decode()}")
    return f"enrolled and reported in {waited:.0f}s; control plane saw {seen.decode()}"
