"""Host and image certification: registered checks, each returning a protocol Finding.

The agent runs the checks and reports findings; the control plane decides "certified" with
:func:`agent.protocol.certification.evaluate` and a profile. Neither entry point raises: a
check that crashes reports ``unknown`` with the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.certification import host as _host  # noqa: F401 - registers the host checks
from agent.certification.image_checks import ImageInput, ImagePolicy
from agent.certification.registry import HOST_CHECKS, IMAGE_CHECKS, run_guarded
from agent.protocol.messages import Finding

__all__ = ["HOST_CHECKS", "IMAGE_CHECKS", "ImagePolicy", "run_host_checks", "run_image_checks"]


def run_host_checks(inventory: dict[str, Any]) -> list[Finding]:
    """Every registered host check over ``inventory``, in id order."""
    return [run_guarded(HOST_CHECKS[cid], inventory) for cid in sorted(HOST_CHECKS)]


def run_image_checks(
    rootfs: Path,
    config: dict[str, Any],
    layers: list[str],
    tags: list[str],
    policy_data: ImagePolicy | dict[str, Any] | None = None,
) -> list[Finding]:
    """Every registered image check, in id order. ``policy_data`` None means the defaults.

    Raises ValueError naming the field only for a malformed policy (the caller's input); the
    image itself never makes this raise.
    """
    if policy_data is None:
        policy = ImagePolicy.default()
    elif isinstance(policy_data, ImagePolicy):
        policy = policy_data
    else:
        policy = ImagePolicy.from_dict(policy_data)
    if not isinstance(config, dict):
        raise ValueError("config: must be the image config object")
    if not Path(rootfs).is_dir():
        raise ValueError(f"rootfs: {rootfs} is not a directory")
    for name, value in (("layers", layers), ("tags", tags)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name}: must be a list of strings")
    img = ImageInput(Path(rootfs), config, list(layers), list(tags), policy)
    return [run_guarded(IMAGE_CHECKS[cid], img) for cid in sorted(IMAGE_CHECKS)]
