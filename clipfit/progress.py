"""Following a job's or a batch prediction's events on a terminal: a progress bar, a line
for every other event, or JSON lines for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from .client import Event


def follow(events: Iterable[Event], as_json: bool, *, desc: str, unit: str, total: str,
           done: str, postfix: Callable[[dict], dict[str, str]],
           notes: TextIO | None = None) -> None:
    """Show ``events`` as they come, until they end. Each "progress" event moves one bar
    (on stderr) of ``unit``: its payload's ``total`` and ``done`` keys say where it stands,
    ``postfix(payload)`` what follows the bar; every other event is a line on ``notes``
    (None: stdout). ``as_json``: each event as a JSON line on stdout instead."""
    from tqdm import tqdm

    bar = None
    try:
        for event in events:
            if as_json:
                print(json.dumps(event.raw), flush=True)
                continue
            payload = event.payload
            if event.kind == "progress":
                if bar is None:
                    bar = tqdm(total=payload[total], unit=unit, desc=desc, file=sys.stderr)
                bar.n = payload[done]
                bar.set_postfix(**postfix(payload), refresh=False)
                bar.refresh()
            else:
                (bar.write if bar else print)(
                    f"{event.kind} {json.dumps(payload) if payload else ''}", file=notes)
    finally:
        if bar is not None:
            bar.close()
