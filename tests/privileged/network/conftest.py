"""Fixtures for network tests: a fresh "host" network namespace per test, and long-running
helper processes killed in teardown."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest
from nettest_helpers import Lab, netns_path
from pyroute2 import IPRoute, netns


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Enter a fresh 'host' netns for the test's duration (this thread only) and leave it,
    removing every namespace created, whatever happened."""
    tag = secrets.token_hex(4)
    host = f"crltest-{tag}-host"
    netns.create(host)
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    created: list[str] = []
    try:
        netns.setns(netns_path(host), flags=0)
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield Lab(tag, host, created)
    finally:
        netns.setns(saved, flags=0)
        os.close(saved)
        for name in [*created, host]:
            netns.remove(name)


@pytest.fixture
def spawn(lab: Lab) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a long-running process (echo servers); all are killed in teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
