"""A container's whole life through the browser with the real stack: the control-plane worker
and an enrolled agent on a private Redis. Created with the form, it reaches running without a
reload, its log line appears in the live tail, then it is stopped and removed."""

from __future__ import annotations

import importlib
import subprocess
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from containers.models import Container, Project
from hosts.models import Host
from tests.browser.conftest import log_in, screenshot
from tests.support.procs import PYTHON, REPO, wait_for


def _agent_runs_containers() -> bool:
    try:
        return hasattr(importlib.import_module("agent.containers"), "ContainerService")
    except ImportError:
        return False


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.privileged,
    pytest.mark.skipif(
        not _agent_runs_containers(),
        reason="the agent's container service (agent.containers.ContainerService) is not there",
    ),
]
LINE = "hello-from-corral"


def delete_containers(agent: Any) -> None:
    """Containers outlive their agent by design (each has its own shim), so the test removes
    what it started with the runtime's own command line, whatever happened before."""
    root = agent.runtime_root
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.is_dir():
            subprocess.run(
                [
                    PYTHON,
                    "-m",
                    "agent.runtime",
                    "--root",
                    str(root),
                    "delete",
                    "--force",
                    entry.name,
                ],
                cwd=REPO,
                timeout=60,
                check=False,
            )


def observed(page: Any, *states: str) -> None:
    wanted = " || ".join(f"s.includes('{s}')" for s in states)
    page.wait_for_function(
        "(() => { const el = document.querySelector('[data-testid=observed-state]');"
        f" const s = el ? el.textContent.toLowerCase() : ''; return {wanted}; }})()",
        timeout=60_000,
    )


def test_container_from_the_form_runs_logs_stops_and_is_removed(
    stack: Any, browser_page: tuple[Any, Any]
) -> None:
    page, console = browser_page
    stack.start_worker()
    agent = stack.enroll("ui-node")
    stack.run_agent(agent)
    wait_for(
        lambda: Host.objects.filter(pk=agent.host_id, status="online").exclude(memory_total=None),
        60,
        "the agent's host online with inventory",
    )
    get_user_model().objects.create_user("ui-admin", password="pw-ui-admin", is_staff=True)
    Project.objects.create(slug="ui", name="UI test project")

    try:
        log_in(page, "ui-admin", "pw-ui-admin")
        page.goto("/containers/new/")
        page.select_option("#f-project", "ui")
        page.fill("#f-name", "hello")
        page.check("input[name=mode][value=host]")
        page.fill("#f-command", f"/bin/sh -c 'echo {LINE}; sleep 300'")
        page.select_option("#f-host", label="ui-node")
        page.click("button:has-text('Create container')")
        page.wait_for_url("**/containers/*/?op=*")
        page.evaluate("window.__notReloaded = true")

        # The live log tail asks the agent directly, so the line shows even before the state does.
        page.wait_for_function(
            f"document.querySelector('[data-testid=logs]')?.textContent.includes('{LINE}')",
            timeout=60_000,
        )
        observed(page, "running")
        assert page.evaluate("window.__notReloaded") is True
        # Usage comes from the agent's cgroup stats, sampled every 5 s by the page.
        page.wait_for_function(
            "document.querySelector('[data-testid=mem-now]')?.textContent.includes('B')",
            timeout=30_000,
        )
        screenshot(page, "container-detail-running")
        detail_url = page.url
        page.goto(f"/hosts/{agent.host_id}/")
        page.wait_for_selector("text=Certification findings")
        screenshot(page, "host-detail-real")
        page.goto(detail_url)
        page.evaluate("window.__notReloaded = true")

        page.click("button[data-action=stop]")
        page.wait_for_selector("#action-result [data-testid=operation]")
        observed(page, "stopped", "exited")
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("button[data-action=remove]")
        page.wait_for_selector(
            "#action-result [data-testid=operation][data-status=succeeded]", timeout=60_000
        )
        container = Container.objects.get(name="hello", project__slug="ui")
        wait_for(
            lambda: Container.objects.get(pk=container.pk).removed_at is not None, 30, "removal"
        )
        assert page.evaluate("window.__notReloaded") is True
        assert console.errors == []
    finally:
        delete_containers(agent)
