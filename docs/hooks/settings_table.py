"""MkDocs hook: the configuration table, generated from ``registry.settings.Settings``.

``docs/configuration.md`` holds the marker below; at build time it is replaced by one row per
field of the settings class (its environment variable, type and bounds, default and
description), so the page cannot drift from the code. A field without a description shows
"—" until the class gets one (``Field(description=...)``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- settings-table -->"
ROOT = Path(__file__).resolve().parents[2]
HOME = Path("~").expanduser()


def _settings_class():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from registry.settings import Settings

    return Settings


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _bounds(field) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = []
    for item in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Path):
        if value.is_absolute() and value.is_relative_to(HOME):
            value = Path("~") / value.relative_to(HOME)
        return f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""` (empty)'
    if isinstance(value, int) and value >= 1024**2 and value % 1024**2 == 0:
        size = value // 1024**2
        human = f"{size // 1024} GiB" if size % 1024 == 0 else f"{size} MiB"
        return f"`{value}` ({human})"
    if isinstance(value, int) and value >= 10_000:
        return f"`{value}` ({value:,})"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_rows(settings_cls=None) -> list[tuple[str, str, str, str]]:
    """(environment variable, type, default, description) for every field, in class order."""
    cls = settings_cls or _settings_class()
    prefix = cls.model_config.get("env_prefix", "")
    rows = []
    for name, field in cls.model_fields.items():
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        rows.append((f"{prefix}{name}".upper(), f"{kind}, {bounds}" if bounds else kind,
                     _default(field), _cell(field.description or "—")))
    return rows


def settings_table(settings_cls=None) -> str:
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for env, kind, default, description in settings_rows(settings_cls):
        lines.append(f"| `{env}` | {kind} | {default} | {description} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, settings_table())
