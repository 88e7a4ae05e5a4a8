"""Template filters of the UI: human sizes, state badges, percentages and SVG sparklines.
Kept here so templates stay declarative and every page formats numbers the same way."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

# Which badge colour a state gets: good, warn, bad, idle, info.
TONES = {
    "online": "good",
    "running": "good",
    "certified": "good",
    "succeeded": "good",
    "pass": "good",
    "ok": "good",
    "unknown": "warn",
    "pending": "idle",
    "created": "idle",
    "sent": "info",
    "paused": "warn",
    "warn": "warn",
    "warning": "warn",
    "maintenance": "warn",
    "stopped": "idle",
    "exited": "idle",
    "removed": "idle",
    "skip": "idle",
    "offline": "bad",
    "failed": "bad",
    "fail": "bad",
    "error": "bad",
    "missing": "bad",
    "not_certified": "bad",
    "timed_out": "bad",
    "lost": "bad",
    "denied": "bad",
}


# Plain-words lead-ins for operation error codes; the agent's own sentence follows.
ERROR_WORDS = {
    "host_unavailable": "The host could not be reached",
    "timed_out": "The command was never sent before its deadline",
    "lost": "The host did not answer before the deadline",
    "no_host_fits": "No host could take it",
    "quota_exceeded": "The project's quota would be exceeded",
    "image_pull_failed": "The image could not be pulled",
}


def plain_error(code: str, error: str) -> str:
    """An operation's error as a sentence a person can act on."""
    lead = ERROR_WORDS.get(code, "")
    if lead and error:
        return f"{lead}: {error}"
    return lead or error


@register.filter
def op_error(op: Any) -> str:
    return plain_error(str(getattr(op, "error_code", "")), str(getattr(op, "error", "")))


@register.filter
def tone(value: Any) -> str:
    """CSS tone of a state name (``badge-good`` etc.)."""
    return TONES.get(str(value or "").lower(), "info")


@register.filter
def badge(value: Any, label: str = "") -> SafeString:
    """A coloured pill for a state; the text is the state itself (colour is never the only cue)."""
    text = label or str(value or "—").replace("_", " ")
    return format_html('<span class="badge badge-{}">{}</span>', tone(value), text)


@register.filter
def bytes_h(value: Any) -> str:
    """1073741824 -> '1.0 GiB'; None -> '—'."""
    if value in (None, ""):
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - loop always returns


@register.filter
def percent(part: Any, whole: Any) -> int:
    """Integer percentage of part in whole, clamped to 0..100; 0 when whole is unknown."""
    try:
        p, w = float(part or 0), float(whole or 0)
    except (TypeError, ValueError):
        return 0
    return max(0, min(100, round(100 * p / w))) if w > 0 else 0


@register.filter
def is_mapping(value: Any) -> bool:
    return isinstance(value, dict)


@register.filter
def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


@register.filter
def get_item(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def kv_lines(mapping: Any) -> str:
    """{'A': '1'} -> 'A=1' lines, for textareas that edit a dict."""
    if not isinstance(mapping, dict):
        return ""
    return "\n".join(f"{k}={v}" for k, v in mapping.items())


@register.simple_tag
def sparkline(values: list[float], width: int = 240, height: int = 48, label: str = "") -> str:
    """An inline SVG polyline of ``values`` scaled to the box; a flat line when too few
    points. Server-rendered so the page needs no charting library."""
    points = [float(v) for v in values if v is not None]
    if len(points) < 2:
        return format_html(
            '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            'aria-label="{l}: collecting samples"><line x1="0" y1="{y}" x2="{w}" y2="{y}" '
            'class="spark-empty"/></svg>',
            w=width,
            h=height,
            y=height - 2,
            l=label,
        )
    top = max(points) or 1.0
    step = width / (len(points) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(points)
    )
    area = f"0,{height} {coords} {width},{height}"
    svg = (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}"><polygon points="{area}" class="spark-area"/>'
        f'<polyline points="{coords}" class="spark-line"/></svg>'
    )
    return mark_safe(svg)  # noqa: S308 - numbers and an escaped label only
