"""Parsing of the container form's text inputs into the API's data shape. Validation itself is
the API's: the parsed data goes through ``ContainerSerializer`` so the UI and the API share one
rule; only what a text box cannot express directly (KEY=VALUE lines, "256M", shell words) is
handled here, each error naming its field."""

from __future__ import annotations

import re
import shlex
from typing import Any

from django.http import QueryDict

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
TEXT_FIELDS = ("name", "mode", "image", "working_dir", "user", "network_mode", "host")
NUMBER_FIELDS = ("cpu_millicores", "cpu_weight", "pids_limit")


class FormErrors(Exception):
    """Field errors found while parsing, as ``{"field": ["message"]}``."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def parse_size(text: str) -> int:
    """'256M', '1.5GiB', '6291456' -> bytes. Raises ValueError with a readable message."""
    match = SIZE_RE.match(text)
    if not match:
        raise ValueError("Use bytes or a size such as 256M, 1G or 512MiB.")
    number, unit, _ = match.groups()
    return int(float(number) * SIZE_UNITS[unit.lower()])


def parse_pairs(text: str, field: str) -> dict[str, str]:
    """KEY=VALUE per line (blank lines ignored) -> dict; an error names the line."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise FormErrors({field: [f"Line {number}: expected KEY=VALUE, got {line!r}."]})
        out[key.strip()] = value.strip()
    return out


def container_data(post: QueryDict) -> dict[str, Any]:
    """The API payload for the submitted form; raises FormErrors for unparseable inputs."""
    data: dict[str, Any] = {"project": post.get("project", "")}
    errors: dict[str, list[str]] = {}
    for field in TEXT_FIELDS:
        value = post.get(field, "").strip()
        if value:
            data[field] = value
    for field in NUMBER_FIELDS:
        value = post.get(field, "").strip()
        if value:
            data[field] = value  # the serializer says "A valid integer is required."
    memory = post.get("memory_limit", "").strip()
    if memory:
        try:
            data["memory_limit"] = parse_size(memory)
        except ValueError as exc:
            errors["memory_limit"] = [str(exc)]
    command = post.get("command", "").strip()
    if command:
        try:
            data["command"] = shlex.split(command)
        except ValueError as exc:
            errors["command"] = [f"Could not split the command into words: {exc}."]
    for field in ("env", "labels", "placement"):
        try:
            pairs = parse_pairs(post.get(field, ""), field)
        except FormErrors as exc:
            errors.update(exc.errors)
            continue
        if pairs:
            data[field] = pairs
    policy = post.get("restart_policy", "no").strip() or "no"
    retries = post.get("restart_max_retries", "").strip()
    if policy == "on-failure" and retries and retries != "0":
        policy = f"on-failure:{retries}"
    data["restart_policy"] = policy
    if errors:
        raise FormErrors(errors)
    return data
