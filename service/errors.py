"""Domain errors: what a use case refuses, and why. ``api/app.py`` maps each to its HTTP
status once; the CLI and the worker read the same errors."""

from __future__ import annotations

from clipfit_core.prompts import shorten

MAX_PROBLEMS = 50  # listed in one answer; the rest are counted


def capped(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS problems, then how many more there were."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]


class DomainError(Exception):
    """A refusal with a sentence for the caller; ``retry_after`` (seconds) when trying again
    later can succeed."""

    code = "error"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Invalid(DomainError):
    """The request is wrong: every problem found, so the client can fix them all at once."""

    code = "invalid"

    def __init__(self, problems: list[str], message: str = "invalid request"):
        self.problems = capped(list(problems))
        super().__init__(message)


class NotFound(DomainError):
    """Nothing of that kind with that id (another tenant's ids look exactly like this)."""

    code = "not_found"

    def __init__(self, what: str, ident: str, message: str | None = None):
        super().__init__(message or f"{what} {shorten(ident)} not found")


def found(row, what: str, ident: str):
    """``row``, or ``NotFound`` naming ``what`` and ``ident`` when it is None (another
    tenant's rows are looked up as None too)."""
    if row is None:
        raise NotFound(what, ident)
    return row


class Conflict(DomainError):
    """The request is fine but the current state does not allow it."""

    code = "conflict"


class OverQuota(DomainError):
    """A quota or rate limit is spent; ``retry_after`` says when to try again."""

    code = "over_quota"


class Unavailable(DomainError):
    """Something the request needs (broker, weights, a busy resource) is away or busy."""

    code = "unavailable"
