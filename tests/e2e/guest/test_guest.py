"""The agent on an SELinux-enforcing, systemd, cgroup v2 host: one qemu (TCG) boot of the
cached Debian 12 guest image, with the repo's agent/ on a payload disk; each guest scenario
is asserted on its own. Run with ``make -f Makefile.guest test-guest`` (as root).

A scenario reports SKIP only when the agent module it exercises is not in the tree yet; the
reason is printed. If qemu cannot run at all, every test here fails with that reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from guest_harness import GuestError, GuestRun, boot, build_image, workdir

pytestmark = [
    pytest.mark.guest,
    pytest.mark.slow,
    pytest.mark.privileged,
    pytest.mark.timeout(1800),  # build (cold, at most 900 s) + boot (at most 720 s)
]

EXPECTED = [
    "guest_platform",
    "network_forwards",
    "inventory",
    "selinux_mcs_isolation",
    "selinux_agent_labels",
    "cgroup_v2_driver",
    "cgroup_systemd_driver",
    "certification",
    "runtime_containers_mcs",
    "agent_restart_keeps_containers",
]


def _selected(config: pytest.Config) -> bool:
    """Boot only when asked for: ``-m guest`` (make test-guest) or CORRAL_GUEST_RUN=1, so the
    main suite does not boot the guest a second time in CI."""
    markexpr = str(config.getoption("markexpr") or "")
    asked = re.search(r"(?<!not )\bguest\b", markexpr) is not None
    return asked or os.environ.get("CORRAL_GUEST_RUN") == "1"


@pytest.fixture(scope="module")
def guest_run(request: pytest.FixtureRequest) -> Iterator[GuestRun | GuestError]:
    """Build (cached) and boot once for the module; a failure is handed to every test."""
    if not _selected(request.config):
        pytest.skip("the guest boots under make test-guest (-m guest) or CORRAL_GUEST_RUN=1")
    if os.geteuid() != 0:
        pytest.fail("the guest harness needs root (debootstrap, chroot, mke2fs -d)")
    try:
        image = build_image()
        with workdir(keep=os.environ.get("CORRAL_GUEST_KEEP") == "1") as wd:
            run: GuestRun | GuestError = boot(image, wd)
    except GuestError as exc:
        run = exc
    yield run


def _run_or_fail(run: GuestRun | GuestError) -> GuestRun:
    if isinstance(run, GuestError):
        pytest.fail(f"the guest did not run: {run}")
    return run


def test_guest_booted_and_reported_every_scenario(guest_run: GuestRun | GuestError) -> None:
    run = _run_or_fail(guest_run)
    print(f"timings (s from qemu start): {run.timings}; {run.end_line}")
    denials = run.avc_denials()
    enforced = [d for d in denials if "permissive=0" in d]
    print(f"AVC denials: {len(denials)} ({len(enforced)} enforced)")
    for line in enforced[:20]:
        print(f"  {line}")
    tail = "\n".join(run.console.splitlines()[-40:])
    assert run.begin_seen, f"the scenario runner never started in the guest; console:\n{tail}"
    assert run.end_line is not None, f"the scenario runner did not finish; console:\n{tail}"
    missing = [name for name in EXPECTED if name not in run.scenarios]
    assert not missing, f"scenarios that did not report: {missing}"


def test_guest_wrote_to_host_redis_through_the_forward(guest_run: GuestRun | GuestError) -> None:
    run = _run_or_fail(guest_run)
    print(f"corral:guest:<token> = {run.host_saw_guest_key}")
    assert run.host_saw_guest_key is not None, "the guest's key never reached the host Redis"
    assert ":container_engine_t:" in run.host_saw_guest_key


# Scenarios that fail today for a reason owned elsewhere: (text the FAIL detail must contain,
# why). Only that exact failure becomes an xfail; any other failure still fails the test, and
# the scenario passes as soon as the gap is closed.
KNOWN_GAPS = {
    "runtime_containers_mcs": (
        "the runtime did not apply process.selinuxLabel",
        "agent.runtime does not write process.selinuxLabel to attr/exec yet (containers run "
        "as spc_t, the policy's default for an engine executing container files)",
    ),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_scenario(guest_run: GuestRun | GuestError, name: str) -> None:
    run = _run_or_fail(guest_run)
    scenario = run.scenarios.get(name)
    assert scenario is not None, f"scenario {name} did not report"
    for line in scenario.logs:
        print(f"{name}: {line}")
    print(f"SCENARIO {name} {scenario.status} {scenario.detail}")
    if scenario.status == "SKIP":
        pytest.skip(f"{name}: {scenario.detail}")
    gap = KNOWN_GAPS.get(name)
    if scenario.status == "FAIL" and gap is not None and gap[0] in scenario.detail:
        pytest.xfail(f"known gap: {gap[1]}")
    assert scenario.status == "PASS", f"{name}: {scenario.detail}"
