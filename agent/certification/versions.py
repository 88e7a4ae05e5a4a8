"""Version ordering for certification: upstream release numbers and Debian package versions."""

from __future__ import annotations

import re

_UPSTREAM_RE = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-~.]?(rc|beta|alpha)[.-]?(\d*))?")


def upstream_key(version: str) -> tuple[tuple[int, ...], int, int]:
    """Sort key of an upstream version: ``1.0.0-rc6 < 1.0.0-rc7 < 1.0.0 < 1.1.5+ds1``.

    Build metadata after ``+`` is ignored (``1.1.5+ds1`` is 1.1.5); a pre-release sorts
    before its release. Raises ValueError naming the version when it cannot be read.
    """
    match = _UPSTREAM_RE.match(version.strip())
    if not match:
        raise ValueError(f"version: cannot read {version!r}")
    numbers = tuple(int(n) for n in match.group(1).split("."))
    numbers = numbers + (0,) * (3 - len(numbers))
    pre = match.group(2)
    pre_rank = {"alpha": 0, "beta": 1, "rc": 2}.get(pre or "", 3)
    return numbers, pre_rank, int(match.group(3) or 0)


def upstream_lt(a: str, b: str) -> bool:
    return upstream_key(a) < upstream_key(b)


def _order(c: str) -> int:
    """dpkg's character order: ~ before everything, letters before non-letters."""
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_fragment(a: str, b: str) -> int:
    """Compare an upstream-version or revision the way dpkg does (non-digits, then digits)."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_debian(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    if not epoch.isdigit() or not upstream:
        raise ValueError(f"version: not a Debian version {version!r}")
    return int(epoch), upstream, revision


def dpkg_compare(a: str, b: str) -> int:
    """Negative, zero or positive as Debian version ``a`` sorts before, equal to, after ``b``."""
    ea, ua, ra = _split_debian(a)
    eb, ub, rb = _split_debian(b)
    if ea != eb:
        return ea - eb
    return _compare_fragment(ua, ub) or _compare_fragment(ra, rb)
