"""Host checks on the software around containers: init system, OCI runtime CVEs, agent
version, clock synchronisation, OS release."""

from __future__ import annotations

from typing import Any

from agent.certification.data import load_data
from agent.certification.registry import finding, host_check, missing, section
from agent.certification.versions import dpkg_compare, upstream_key
from agent.protocol.messages import Finding


@host_check("cert.systemd.W001", "systemd manages the host")
def systemd_init(inv: dict[str, Any]) -> Finding:
    cid = "cert.systemd.W001"
    init = section(inv, "init")
    if init is None:
        return missing(cid, inv, "init")
    if init.get("systemd"):
        return finding(cid, "pass", "systemd is PID 1", pid1=init.get("pid1_comm"))
    return finding(
        cid,
        "warn",
        f"PID 1 is {init.get('pid1_comm')!r}, not systemd",
        "without systemd the agent manages cgroups directly (no Delegate=yes slices)",
        pid1=init.get("pid1_comm"),
    )


def _runtime_vulnerable(
    entry: dict[str, Any], rt: dict[str, Any], os_id: str | None
) -> tuple[bool, str]:
    """(affected?, why) for one CVE entry and one installed runtime."""
    version = rt.get("version")
    if not version:
        raise ValueError(f"runtimes.{entry['runtime']}.version: unknown")
    fixed_by = upstream_fix(version, entry)
    if fixed_by:
        return False, f"{version} >= {fixed_by}"
    pkg = rt.get("package") or {}
    for fix in entry.get("distro_fixes", []):
        same_pkg = pkg.get("manager") == fix["manager"] and pkg.get("name") == fix["package"]
        if (
            same_pkg
            and os_id == fix["os_id"]
            and pkg.get("version")
            and dpkg_compare(pkg["version"], fix["fixed_version"]) >= 0
        ):
            return False, f"{os_id} package {pkg['version']} carries the fix"
    return True, f"{version} is before the fix"


def upstream_fix(version: str, entry: dict[str, Any]) -> str | None:
    """The upstream release whose fix ``version`` already has, or None when it is affected.

    ``fixed_in`` is one release for every line. ``fixed_in_lines`` lists a fix per release
    line (1.2.8, 1.3.3, ...): a version takes the fix of its own major.minor line; a line
    newer than every listed fix is fixed, an older line without a fix is affected.
    """
    key = upstream_key(version)
    if "fixed_in" in entry:
        return entry["fixed_in"] if key >= upstream_key(entry["fixed_in"]) else None
    fixes = sorted(entry["fixed_in_lines"], key=upstream_key)
    for fix in fixes:
        if upstream_key(fix)[0][:2] == key[0][:2]:
            return fix if key >= upstream_key(fix) else None
    return fixes[-1] if key > upstream_key(fixes[-1]) else None


RUNTIME_CHOICES = ("corral", "crun", "runc")


def _configured_runtime(inv: dict[str, Any]) -> str | None:
    """The runtime the agent starts containers with (inventory ``agent.runtime``), or None
    when the agent does not say (agents before 0.2 ran whichever runtime was installed, so
    every installed runtime counts as used)."""
    ag = section(inv, "agent") or {}
    value = ag.get("runtime")
    return str(value) if isinstance(value, str) and value else None


def _runtime_advisories(
    inv: dict[str, Any], names: set[str] | None
) -> tuple[list[dict[str, str]], dict[str, list[str]], list[str]] | None:
    """(affected, checked, unreadable) over installed runtimes (only ``names`` when given);
    None when the runtimes section is unavailable."""
    rts = section(inv, "runtimes")
    if rts is None:
        return None
    os_id = (section(inv, "os") or {}).get("id")
    table = load_data("runtime_cves.json")["entries"]
    affected: list[dict[str, str]] = []
    checked: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for name, rt in sorted((rts.get("runtimes") or {}).items()):
        if names is not None and name not in names:
            continue
        for entry in (e for e in table if e["runtime"] == name):
            try:
                hit, why = _runtime_vulnerable(entry, rt, os_id)
            except ValueError:
                unreadable.append(name)
                break
            checked.setdefault(name, []).append(f"{entry['cve']}: {why}")
            if hit:
                affected.append({"runtime": name, "cve": entry["cve"], "source": entry["source"]})
    return affected, checked, unreadable


@host_check("cert.runtime.E001", "the OCI runtime the agent uses has no known escape CVE")
def runtime_cves(inv: dict[str, Any]) -> Finding:
    """Fails only for the runtime the agent is configured to use: an installed runtime that
    nothing runs is advice (cert.runtime.W001), not a reason to refuse the host."""
    cid = "cert.runtime.E001"
    configured = _configured_runtime(inv)
    if configured is not None and configured not in RUNTIME_CHOICES:
        return finding(
            cid,
            "unknown",
            f"agent.runtime {configured!r} is not one of {', '.join(RUNTIME_CHOICES)}",
            runtime=configured,
        )
    used = None if configured is None else {configured}
    found = _runtime_advisories(inv, used)
    if found is None:
        return missing(cid, inv, "runtimes")
    affected, checked, unreadable = found
    scope = {"runtime": configured or "any installed"}
    if configured not in (None, "corral"):
        installed = (section(inv, "runtimes") or {}).get("runtimes") or {}
        if configured not in installed:
            return finding(
                cid,
                "fail",
                f"the agent is configured to use {configured}, which is not installed",
                f"install {configured} or configure the agent's own runtime (corral)",
                **scope,
            )
    if affected:
        names = ", ".join(f"{a['runtime']} ({a['cve']})" for a in affected)
        return finding(
            cid,
            "fail",
            f"vulnerable OCI runtime in use: {names}",
            "upgrade the runtime packages named here",
            affected=affected,
            checked=checked,
            **scope,
        )
    if unreadable:
        return finding(
            cid,
            "unknown",
            f"could not read the version of: {', '.join(unreadable)}",
            checked=checked,
            unreadable=unreadable,
            **scope,
        )
    if configured == "corral":
        return finding(
            cid, "pass", "the agent runs containers with its own runtime (corral)", **scope
        )
    return finding(cid, "pass", "no runtime in use matches a known CVE", checked=checked, **scope)


@host_check("cert.runtime.W001", "installed runtimes the agent does not use have no known CVE")
def unused_runtime_cves(inv: dict[str, Any]) -> Finding:
    """Advice about runtimes present on the host but not used by the agent (other tools on
    the host may still run them)."""
    cid = "cert.runtime.W001"
    configured = _configured_runtime(inv)
    if configured is None:
        return finding(
            cid, "pass", "the agent does not report its runtime: every runtime counts as used"
        )
    rts = section(inv, "runtimes")
    if rts is None:
        return missing(cid, inv, "runtimes")
    unused = set(rts.get("runtimes") or {}) - {configured}
    found = _runtime_advisories(inv, unused)
    assert found is not None
    affected, checked, unreadable = found
    if affected:
        names = ", ".join(f"{a['runtime']} ({a['cve']})" for a in affected)
        return finding(
            cid,
            "warn",
            f"installed but unused by the agent, vulnerable: {names}",
            "upgrade or remove them; other tools on this host may run them",
            affected=affected,
            checked=checked,
            runtime=configured,
        )
    if unreadable:
        return finding(
            cid,
            "unknown",
            f"could not read the version of: {', '.join(unreadable)}",
            unreadable=unreadable,
            runtime=configured,
        )
    return finding(cid, "pass", "no unused runtime matches a known CVE", checked=checked)


@host_check("cert.agent.E001", "the agent version is supported")
def agent_version(inv: dict[str, Any]) -> Finding:
    cid = "cert.agent.E001"
    ag = section(inv, "agent")
    if ag is None:
        return missing(cid, inv, "agent")
    minimum = load_data("supported.json")["agent_min_version"]
    version = str(ag.get("version", ""))
    try:
        too_old = upstream_key(version) < upstream_key(minimum)
    except ValueError:
        return finding(cid, "unknown", f"agent version {version!r} is unreadable", version=version)
    if too_old:
        return finding(
            cid,
            "fail",
            f"agent {version} is older than the supported {minimum}",
            "upgrade the agent",
            version=version,
            minimum=minimum,
        )
    return finding(cid, "pass", f"agent {version} is supported", version=version, minimum=minimum)


@host_check("cert.clock.W001", "the clock is synchronised")
def clock_sync(inv: dict[str, Any]) -> Finding:
    cid = "cert.clock.W001"
    clock = section(inv, "clock")
    if clock is None:
        return missing(cid, inv, "clock")
    evidence: dict[str, Any] = {
        k: clock.get(k) for k in ("synchronized", "sta_unsync", "maxerror_us")
    }
    if clock.get("synchronized"):
        return finding(cid, "pass", "the kernel clock is NTP-synchronised", **evidence)
    return finding(
        cid,
        "warn",
        "the kernel clock is not synchronised (STA_UNSYNC)",
        "run an NTP client (chrony, systemd-timesyncd); signed messages expire by time",
        **evidence,
    )


@host_check("cert.os.E001", "the OS release is supported")
def os_supported(inv: dict[str, Any]) -> Finding:
    cid = "cert.os.E001"
    osr = section(inv, "os")
    if osr is None:
        return missing(cid, inv, "os")
    supported: dict[str, list[str]] = load_data("supported.json")["os"]
    os_id, version = osr.get("id", ""), osr.get("version_id", "")
    ok = any(version == v or version.startswith(v + ".") for v in supported.get(os_id, []))
    evidence: dict[str, Any] = {
        "id": os_id,
        "version_id": version,
        "pretty_name": osr.get("pretty_name"),
    }
    if ok:
        return finding(cid, "pass", f"{os_id} {version} is supported", **evidence)
    return finding(
        cid,
        "fail",
        f"{os_id} {version} is not a supported OS release",
        f"supported: {', '.join(f'{k} {v}' for k, vs in supported.items() for v in vs)}",
        **evidence,
    )
