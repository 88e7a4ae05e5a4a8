"""evaluate(findings, profile) and version ordering used by the checks."""

from __future__ import annotations

import subprocess

import pytest

from agent.certification.versions import dpkg_compare, upstream_lt
from agent.protocol.certification import PROFILES, evaluate, profile_get
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import Finding, Verdict


def findings(**verdicts: Verdict) -> list[Finding]:
    return [Finding(id=k.replace("_", "."), verdict=v, message="m") for k, v in verdicts.items()]


DEV = profile_get("development")


def all_dev(verdict: Verdict) -> list[Finding]:
    return [Finding(id=i, verdict=verdict, message="m") for i in DEV.required]


def test_every_required_pass_or_warn_is_certified() -> None:
    fs = all_dev("pass")
    fs[0] = Finding(id=fs[0].id, verdict="warn", message="advice")
    assert evaluate(fs, DEV) == ("certified", [])


def test_a_failed_required_finding_is_not_certified_and_named() -> None:
    fs = all_dev("pass")
    fs[2] = Finding(id=fs[2].id, verdict="fail", message="bad")
    assert evaluate(fs, "development") == ("not_certified", [fs[2].id])


def test_unknown_or_missing_required_findings_give_unknown() -> None:
    fs = all_dev("pass")
    fs[1] = Finding(id=fs[1].id, verdict="unknown", message="?")
    assert evaluate(fs, DEV) == ("unknown", [])
    assert evaluate(all_dev("pass")[1:], DEV) == ("unknown", [])


def test_fail_wins_over_unknown() -> None:
    fs = all_dev("unknown")
    fs[0] = Finding(id=fs[0].id, verdict="fail", message="bad")
    assert evaluate(fs, DEV) == ("not_certified", [fs[0].id])


def test_findings_outside_the_profile_are_ignored() -> None:
    fs = [*all_dev("pass"), Finding(id="cert.selinux.E001", verdict="fail", message="off")]
    assert evaluate(fs, "development") == ("certified", [])
    assert evaluate(fs, "certified-container-host")[0] == "not_certified"


def test_strict_profile_requires_every_selinux_finding_development_none() -> None:
    strict = set(profile_get("certified-container-host").required)
    assert {"cert.selinux.E001", "cert.selinux.E002", "cert.selinux.E003"} <= strict
    assert "cert.selinux.E004" in strict
    assert not [i for i in DEV.required if i.startswith("cert.selinux.")]
    assert {p.kind for p in PROFILES.values()} == {"host", "image"}


def test_unknown_profile_and_wrong_input_name_the_field() -> None:
    with pytest.raises(ProtocolError) as exc:
        evaluate([], "prod")
    assert exc.value.field == "profile"
    with pytest.raises(ProtocolError) as exc:
        evaluate([{"id": "cert.kernel.E001"}], DEV)  # type: ignore[list-item]
    assert exc.value.field == "findings"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.1.5+ds1-1+deb12u1", "1.1.5+ds1-1"),
        ("1.0~rc1-1", "1.0-1"),
        ("1:0.9", "2.0"),
        ("1.10-1", "1.9-1"),
        ("1.0a-1", "1.0+b1-1"),
        ("2.1.6+ds1-1", "2.1.6+ds1-1"),
        ("1.0.0~rc93+ds1-5+deb11u3", "1.1.5+ds1-1+deb12u1"),
    ],
)
def test_dpkg_compare_agrees_with_dpkg(a: str, b: str) -> None:
    def real(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0

    mine = dpkg_compare(a, b)
    assert (mine < 0, mine == 0, mine > 0) == (real("lt"), real("eq"), real("gt"))


def test_upstream_order_handles_release_candidates_and_build_metadata() -> None:
    assert upstream_lt("1.0.0-rc6", "1.0.0-rc7")
    assert upstream_lt("1.0-rc6", "1.0.0-rc7")
    assert upstream_lt("1.0.0-rc92", "1.0.0")
    assert upstream_lt("1.1.5+ds1", "1.1.12")
    assert not upstream_lt("1.8.1", "1.4.4")
    with pytest.raises(ValueError, match="version"):
        upstream_lt("unknown", "1.0")
