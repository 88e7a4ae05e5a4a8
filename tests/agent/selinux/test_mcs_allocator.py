"""MCS category allocation: unique under concurrency, persistent, idempotent, reusable."""

from __future__ import annotations

import json
import multiprocessing
import random
import re
from pathlib import Path

import pytest

from agent.runtime.selinux import MCSAllocator, SELinuxError

LEVEL_RE = re.compile(r"^s0:c(\d+),c(\d+)$")


def _allocate_many(state: str, worker: int, count: int) -> list[tuple[str, str]]:
    allocator = MCSAllocator(Path(state))
    return [(f"w{worker}-{i}", allocator.allocate(f"w{worker}-{i}")) for i in range(count)]


def test_allocate_returns_a_valid_random_pair(tmp_path: Path) -> None:
    level = MCSAllocator(tmp_path / "mcs.json").allocate("c1")
    match = LEVEL_RE.match(level)
    assert match
    assert int(match.group(1)) < int(match.group(2)) < 1024


def test_allocate_is_idempotent_and_persisted(tmp_path: Path) -> None:
    state = tmp_path / "mcs.json"
    first = MCSAllocator(state).allocate("c1")
    assert MCSAllocator(state).allocate("c1") == first  # a new allocator: read from disk
    data = json.loads(state.read_text())
    assert data["levels"] == {"c1": first}


def test_released_pairs_are_reused_and_held_ones_never(tmp_path: Path) -> None:
    # 3 categories = 3 pairs: the space is exhausted, so reuse is forced and visible.
    allocator = MCSAllocator(tmp_path / "mcs.json", categories=3, rng=random.Random(7))
    levels = {allocator.allocate(name) for name in ("a", "b", "c")}
    assert levels == {"s0:c0,c1", "s0:c0,c2", "s0:c1,c2"}
    with pytest.raises(SELinuxError, match="in use"):
        allocator.allocate("d")
    freed = allocator.allocations()["b"]
    assert allocator.release("b")
    assert not allocator.release("b")  # idempotent
    assert allocator.allocate("d") == freed


@pytest.mark.slow
def test_concurrent_processes_never_get_the_same_pair(tmp_path: Path) -> None:
    """8 processes x 50 allocations against one file: 400 distinct pairs, all on disk."""
    state = tmp_path / "mcs.json"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        results = pool.starmap(_allocate_many, [(str(state), w, 50) for w in range(8)])
    pairs = [pair for worker in results for pair in worker]
    levels = [level for _, level in pairs]
    assert len(levels) == 400
    assert len(set(levels)) == 400
    assert json.loads(state.read_text())["levels"] == dict(pairs)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_a_corrupt_state_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "mcs.json"
    state.write_text("{not json")
    with pytest.raises(SELinuxError) as info:
        MCSAllocator(state).allocate("c1")
    assert info.value.field == str(state)
    state.write_text('{"levels": []}')
    with pytest.raises(SELinuxError):
        MCSAllocator(state).allocate("c1")


@pytest.mark.parametrize("bad", ["", "../x", "a b", "x" * 200])
def test_bad_container_ids_name_the_field(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SELinuxError) as info:
        MCSAllocator(tmp_path / "mcs.json").allocate(bad)
    assert info.value.field == "container_id"


def test_category_count_is_validated(tmp_path: Path) -> None:
    with pytest.raises(SELinuxError) as info:
        MCSAllocator(tmp_path / "mcs.json", categories=2000)
    assert info.value.field == "categories"
