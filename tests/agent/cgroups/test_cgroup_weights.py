"""cpu.shares <-> cpu.weight translation (crun's log-space quadratic) and OCI parsing."""

from __future__ import annotations

import pytest

from agent.runtime.cgroups import (
    CgroupError,
    ResourceLimits,
    shares_to_weight,
    weight_to_shares,
)


@pytest.mark.parametrize(
    ("shares", "weight"), [(2, 1), (1024, 100), (262144, 10000), (512, 59), (4096, 303)]
)
def test_shares_to_weight_meets_the_ends_and_the_defaults(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


def test_shares_to_weight_is_monotonic_over_the_whole_range() -> None:
    weights = [shares_to_weight(s) for s in range(2, 262145, 97)]
    assert weights == sorted(weights)


def test_weight_to_shares_inverts_shares_to_weight() -> None:
    assert weight_to_shares(1) == 2
    assert weight_to_shares(100) == 1024
    assert weight_to_shares(10000) == 262144
    for weight in range(1, 10001):
        assert shares_to_weight(weight_to_shares(weight)) == weight, weight


@pytest.mark.parametrize("bad", [0, 1, 262145])
def test_out_of_range_shares_name_the_field(bad: int) -> None:
    with pytest.raises(CgroupError) as info:
        shares_to_weight(bad)
    assert info.value.field == "cpu.shares"


def test_from_oci_reads_every_supported_field() -> None:
    limits = ResourceLimits.from_oci(
        {
            "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "memory": {"limit": 64 << 20, "swap": 128 << 20},
            "pids": {"limit": 32},
            "blockIO": {"weight": 100},
            "devices": [],
        }
    )
    assert limits == ResourceLimits(512, 20000, 100000, "0-1", "0", 64 << 20, 128 << 20, 32, 100)
    assert ResourceLimits.from_oci(None) == ResourceLimits()
