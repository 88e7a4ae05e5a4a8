"""The UI in a real Chromium against a live server: logging in, navigating by keyboard and
links, live updates without reloads, the create form's field errors, and full-page
screenshots (into screenshots/) at desktop and phone widths."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command

from hosts.models import Host
from tests.browser.conftest import log_in, screenshot
from tests.frontend.actors import build_fleet

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def ui_fleet(transactional_db: Any) -> dict[str, Any]:
    fleet = build_fleet()
    call_command("seed_fleet", hosts=24, containers=120, projects=3, verbosity=0)
    # No agent runs for these hosts: without a key the UI says so at once instead of asking
    # the broker for logs and stats that never come.
    Host.objects.update(public_key="")
    return fleet


def settle(page: Any) -> None:
    """Wait until the page's first htmx loads (logs, stats) have been swapped in."""
    page.wait_for_load_state("load")
    page.wait_for_function("!document.querySelector('.htmx-request')")
    page.wait_for_function(
        "!document.querySelector('#logs') || !document.querySelector('#logs').textContent"
        ".includes('Loading')"
    )


def test_anonymous_is_sent_to_login_and_a_wrong_password_is_explained(
    ui_fleet: dict[str, Any], browser_page: tuple[Any, Any]
) -> None:
    page, console = browser_page
    page.goto("/containers/")
    assert "/login/" in page.url
    assert page.title() == "Log in · Corral"
    page.fill("#id_username", "operator-a")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert "correct username and password" in page.inner_text("[role=alert]")
    log_in(page, "operator-a", "pw-operator-a")
    assert page.title() == "Dashboard · Corral"
    assert console.errors == []


def test_create_form_shows_field_errors_and_keeps_values(
    ui_fleet: dict[str, Any], browser_page: tuple[Any, Any]
) -> None:
    page, console = browser_page
    log_in(page, "operator-a", "pw-operator-a")
    page.click("nav.nav >> text=Containers")
    page.click("text=New container")
    assert page.title() == "New container · Corral"
    page.fill("#f-name", "web-2")
    page.fill("#f-image", "busybox:1.36")
    page.fill("#f-mem", "lots")
    page.fill("#f-env", "NOEQUALS")
    page.click("button:has-text('Create container')")
    assert page.inner_text("#err-memory_limit").endswith(
        "Use bytes or a size such as 256M, 1G or 512MiB."
    )
    assert "Line 1: expected KEY=VALUE" in page.inner_text("#err-env")
    assert page.get_attribute("#f-mem", "aria-invalid") == "true"
    assert page.input_value("#f-name") == "web-2"
    page.fill("#f-mem", "1M")
    page.fill("#f-env", "A=1")
    page.click("button:has-text('Create container')")
    assert "at least" in page.inner_text("#err-memory_limit")
    assert not page.is_visible("#err-env")
    screenshot(page, "container-new-errors")
    # A host container has no image: the field goes away while that mode is chosen.
    page.check("input[name=mode][value=host]")
    assert not page.is_visible("#f-image")
    page.check("input[name=mode][value=image]")
    assert page.is_visible("#f-image")
    assert console.errors == []


def test_dashboard_updates_live_without_reload_and_is_keyboard_usable(
    ui_fleet: dict[str, Any], browser_page: tuple[Any, Any]
) -> None:
    page, console = browser_page
    log_in(page, "fleet-admin", "pw-fleet-admin")
    page.evaluate("window.__notReloaded = true")
    before = int(page.inner_text("[data-testid=hosts-offline]"))
    Host.objects.filter(name="node-1").update(status="offline")
    offline = "document.querySelector('[data-testid=hosts-offline]').textContent.trim()"
    page.wait_for_function(f"{offline} == '{before + 1}'", timeout=10_000)
    assert page.evaluate("window.__notReloaded") is True
    # Keyboard: the first Tab reaches the skip link, Enter moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    # Every dashboard number is a link to the filtered list.
    page.click("a.card:has-text('Offline')")
    page.wait_for_url("**/hosts/?status=offline")
    assert page.title() == "Hosts · Corral"
    assert "node-1" in page.inner_text("[data-testid=host-table]")
    assert console.errors == []


def test_filters_update_the_container_list_in_place(
    ui_fleet: dict[str, Any], browser_page: tuple[Any, Any]
) -> None:
    page, console = browser_page
    log_in(page, "fleet-admin", "pw-fleet-admin")
    page.goto("/containers/")
    page.evaluate("window.__notReloaded = true")
    page.fill("input[name=q]", "web-a")
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=container-table] tbody tr').length == 1"
    )
    assert "web-a" in page.inner_text("[data-testid=container-table]")
    assert "q=web-a" in page.url  # the filter is in the address bar (shareable, back works)
    # The 2 s poll refreshes the same filtered list (it asks for the current address).
    with page.expect_response(lambda r: "/containers/?" in r.url and "q=web-a" in r.url):
        pass
    rows = page.locator("[data-testid=container-table] tbody tr")
    assert rows.count() == 1
    assert page.evaluate("window.__notReloaded") is True
    assert console.errors == []


def test_full_page_screenshots(ui_fleet: dict[str, Any], browser_page: tuple[Any, Any]) -> None:
    """Screenshots for the README and for looking at: desktop and phone widths."""
    page, console = browser_page
    log_in(page, "fleet-admin", "pw-fleet-admin")
    host = ui_fleet["host1"]
    container = ui_fleet["c_a"]
    shots = {
        "dashboard": "/",
        "hosts": "/hosts/",
        "host-detail": f"/hosts/{host.pk}/",
        "containers": "/containers/",
        "container-detail": f"/containers/{container.pk}/",
        "container-new": "/containers/new/",
        "projects": "/projects/",
        "operations": "/operations/",
    }
    # Stats samples as the detail page's polling would have gathered them (same process cache).
    cache.set(
        f"corral:ui:stats:{container.pk}",
        [
            {
                "t": float(i),
                "cpu_ns": i * 4e8 + (i * i % 7) * 5e7,
                "mem": (40 + i % 9) * 2**20,
                "limit": 2**28,
            }
            for i in range(30)
        ],
    )
    for name, url in shots.items():
        page.goto(url)
        settle(page)
        path = screenshot(page, name)
        assert path.stat().st_size > 10_000, name
    page.set_viewport_size({"width": 390, "height": 844})
    for name, url in shots.items():
        page.goto(url)
        settle(page)
        if name in ("dashboard", "container-detail", "containers"):
            screenshot(page, f"{name}-phone")
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways on a phone by {overflow}px"
    assert console.errors == []
