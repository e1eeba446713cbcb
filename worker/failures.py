"""What a failed job tells its owner: a sentence in plain words that says what to do, never
a traceback, a server path or a library's internals (those go to the worker's log)."""

from __future__ import annotations

import torch

from clipfit_core.delta import Delta, tensor_problems
from clipfit_core.models import UnknownModelError, WeightsUnavailableError


class TrainingDiverged(Exception):
    """The trained values are not finite numbers: such a delta is never stored (it would turn
    every probability of every answer into NaN)."""


def check_finite(delta: Delta) -> None:
    """Raise :class:`TrainingDiverged` naming the first tensor that holds NaN or infinity."""
    problems = tensor_problems(delta.tensors, limit=1)
    if problems:
        raise TrainingDiverged(problems[0])


def failure_message(error: Exception, *, base_model: str) -> str:
    """The job's ``error`` for an exception raised while training it."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) \
            or "out of memory" in str(error).lower():
        return ("the worker ran out of memory while training; try a smaller batch_size, or "
                "ask the operator for a larger worker")
    if isinstance(error, (WeightsUnavailableError, UnknownModelError)):
        return (f"the weights of base model {base_model!r} could not be loaded on the worker; "
                "the operator's worker log says how to install them")
    if isinstance(error, TrainingDiverged):
        return (f"training diverged ({error}), so no adapter was stored; submit it again "
                "with a lower lr, or lr=auto")
    if isinstance(error, ValueError):  # a stored spec this version refuses: the reason is ours
        return f"the job's settings were refused: {error}"
    return (f"training stopped on an unexpected error ({type(error).__name__}); the worker's "
            "log has the details, and the same job may succeed if submitted again")
