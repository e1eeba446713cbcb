"""Accuracy, per-class accuracy, and the base-to-new harmonic mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accuracy(preds: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int]) -> float:
    """Fraction of predictions equal to their labels (0.0 for no samples)."""
    preds, labels = torch.as_tensor(preds), torch.as_tensor(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {labels.shape[0]} labels")
    return (preds == labels).float().mean().item() if labels.numel() else 0.0


def per_class_accuracy(
    preds: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int],
    classnames: Sequence[str],
) -> dict[str, float | None]:
    """Accuracy within each class; None for a class with no samples."""
    preds, labels = torch.as_tensor(preds), torch.as_tensor(labels)
    out: dict[str, float | None] = {}
    for i, name in enumerate(classnames):
        mask = labels == i
        out[name] = (preds[mask] == i).float().mean().item() if mask.any() else None
    return out


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2BN / (B + N), the paper's base-to-new summary (0 when both are 0)."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0

