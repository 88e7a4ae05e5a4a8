"""Runs every guest scenario in order, each under its own deadline, and reports one
``SCENARIO <name> PASS|FAIL|SKIP <detail>`` line per scenario on the results channel.

A scenario returns its PASS detail, raises :class:`Skip` when the agent module it exercises
has not landed yet, and fails on any other exception (the line names the exception).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from types import FrameType

from scenario import agent_parts, cgroups, enrollment, platform, runtime_mcs, selinux_mcs
from scenario.common import Channel, Context, Skip

Scenario = Callable[[Context], str]

# Order matters a little: cheap platform facts first, the agent restart last.
SCENARIOS: list[tuple[str, Scenario, int]] = [
    ("guest_platform", platform.guest_platform, 60),
    ("network_forwards", platform.network_forwards, 60),
    ("inventory", agent_parts.inventory, 120),
    ("selinux_mcs_isolation", selinux_mcs.isolation_with_plain_setexec, 120),
    ("selinux_agent_labels", selinux_mcs.isolation_with_agent_selinux, 120),
    ("cgroup_v2_driver", cgroups.v2_driver, 180),
    ("cgroup_systemd_driver", cgroups.systemd_driver, 180),
    ("certification", agent_parts.certification, 120),
    ("runtime_containers_mcs", runtime_mcs.containers_with_mcs, 180),
    ("agent_restart_keeps_containers", runtime_mcs.agent_restart, 180),
    ("agent_enrolls_and_reports", enrollment.enroll_and_report, 300),
]


class ScenarioTimeout(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise ScenarioTimeout("scenario overran its deadline")


def run_one(channel: Channel, name: str, fn: Scenario, deadline: int) -> str:
    ctx = Context(channel, name)
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(deadline)
    try:
        detail = fn(ctx)
        status = "PASS"
    except Skip as exc:
        status, detail = "SKIP", str(exc)
    except Exception as exc:  # a scenario failure must not stop the others
        status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        for line in traceback.format_exc().splitlines()[-8:]:
            ctx.log(f"trace {line}")
    finally:
        signal.alarm(0)
    channel.emit(f"SCENARIO {name} {status} {detail} ({time.monotonic() - start:.1f}s)")
    return status


def avc_denials() -> list[str]:
    """Every AVC denial in the kernel log so far (no auditd here: the kernel logs them),
    including the permissive engine domain's would-be denials."""
    out = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return [f"cannot read /dev/kmsg: {exc}"]
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            message = record.split(";", 1)[-1].strip()
            if "avc:  denied" in message:
                out.append(message[message.index("avc:") :])
    finally:
        os.close(fd)
    return out


def _cmdline_only() -> set[str]:
    """``corral.only=a,b`` on the kernel command line: run just those (harness --only)."""
    with open("/proc/cmdline") as fh:
        for word in fh.read().split():
            if word.startswith("corral.only="):
                return set(word.split("=", 1)[1].split(","))
    return set()


def _uptime() -> str:
    with open("/proc/uptime") as fh:
        return fh.read().split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default="/dev/ttyS1", help="results channel (a tty)")
    parser.add_argument("--only", action="append", help="run only these scenarios")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    channel = Channel(args.results)
    channel.open()
    channel.emit(f"BEGIN uptime={_uptime()}")
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    only = set(args.only or []) | _cmdline_only()
    for name, fn, deadline in SCENARIOS:
        if only and name not in only:
            continue
        counts[run_one(channel, name, fn, deadline)] += 1
    for line in avc_denials():
        channel.emit(f"AVC {line}")
    channel.emit(
        f"END pass={counts['PASS']} fail={counts['FAIL']} skip={counts['SKIP']} uptime={_uptime()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
