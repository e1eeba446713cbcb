"""A job's or a batch prediction's events: one page, or followed live as Server-Sent Events
(``?stream=true``) until the final one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.context import Caller

from .schemas import EventPublic, EventsPublic

POLL_SECONDS = 0.5  # how often a stream looks for new events

# the use case: (caller, after) -> (events after the event id ``after``, whether it has
# finished); caller None on a stream's later polls (checked on the first)
ReadEvents = Callable[[Caller | None, int], tuple[Sequence[Any], bool]]


async def events_answer(read: ReadEvents, caller: Caller, *, cursor: int, limit: int,
                        stream: bool, last_event_id: int | None
                        ) -> EventsPublic | EventSourceResponse:
    """The events after ``cursor`` as a page of ``limit``; streamed, every event from there
    (or from ``Last-Event-ID``, when a client reconnects), each SSE message carrying the
    event's id, until the final event."""
    after = max(cursor, last_event_id or 0) if stream else cursor
    first, finished = await run_in_threadpool(read, caller, after)
    if not stream:
        return EventsPublic(data=first, next_cursor=str(first[-1].id)
                            if len(first) == limit else None)

    async def messages():
        nonlocal after
        events, done = first, finished
        while True:
            for e in (EventPublic.model_validate(e) for e in events):
                after = e.id
                yield ServerSentEvent(data=e.model_dump_json(), event=e.kind, id=str(e.id))
            if done and not events:
                return
            await asyncio.sleep(POLL_SECONDS)
            events, done = await run_in_threadpool(read, None, after)

    return EventSourceResponse(messages(), ping=15)
