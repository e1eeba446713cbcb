"""A new version of an adapter beside the one it would replace and zero-shot, on the same
fixed benchmark images, and whether it may replace it.

The difference in accuracy between two models on the same images is paired: each image is
right or wrong for both, so the interval is taken over images, not over two independent
accuracies (which would be far wider). It is a percentile bootstrap over the images
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13), with a fixed seed so
the same logits always give the same interval. The promotion rule: a candidate is *not worse*
than the version it would replace unless it is worse beyond what the benchmark set can tell
apart from chance: its mean difference is below zero and its interval does not reach above
zero (an interval whose top is exactly 0 is a worse candidate, not a tie).
"""

from __future__ import annotations

import torch

from .report import _rounded, model_metrics

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def paired_difference(new_right: torch.Tensor, old_right: torch.Tensor, *,
                      level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = SEED) -> dict:
    """Accuracy of ``new`` minus accuracy of ``old`` on the same images (booleans per image),
    with its paired bootstrap interval and the images only one of them got right."""
    new_right, old_right = new_right.bool().cpu(), old_right.bool().cpu()
    if new_right.shape != old_right.shape or new_right.dim() != 1:
        raise ValueError("both models must be judged on the same images")
    n = new_right.numel()
    if n == 0:
        return {"images": 0, "difference": None, "low": None, "high": None, "level": level,
                "only_new_right": 0, "only_old_right": 0}
    diff = new_right.float() - old_right.float()
    generator = torch.Generator().manual_seed(seed)
    per_chunk = max(1, 4_000_000 // n)  # bounded memory whatever the set's size
    means = torch.cat([diff[torch.randint(0, n, (min(per_chunk, resamples - done), n),
                                          generator=generator)].mean(1)
                       for done in range(0, resamples, per_chunk)])
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail])).tolist()
    return {"images": n, "difference": _rounded(diff.mean()), "low": _rounded(low),
            "high": _rounded(high), "level": level,
            "only_new_right": int((new_right & ~old_right).sum()),
            "only_old_right": int((old_right & ~new_right).sum())}


def version_comparison(candidate: torch.Tensor, previous: torch.Tensor, zero_shot: torch.Tensor,
                       labels: torch.Tensor, classnames: list[str]) -> dict:
    """The comparison report: each model's metrics (``report.model_metrics``) on the same
    images over the same classes, per-class recall side by side with the change against the
    previous version, the paired differences against the previous version and zero-shot,
    and ``not_worse`` (None when there are no images to judge by)."""
    labels = labels.cpu()
    models = {"candidate": candidate, "previous": previous, "zero_shot": zero_shot}
    metrics = {k: model_metrics(v.float().cpu(), labels, classnames) for k, v in models.items()}
    right = {k: v.float().cpu().argmax(-1) == labels for k, v in models.items()}
    per_class = []
    for i, name in enumerate(classnames):
        row = {"class": name, "images": metrics["candidate"]["per_class"][i]["images"]}
        for k in models:
            row[f"{k}_recall"] = metrics[k]["per_class"][i]["recall"]
        row["change"] = None if row["previous_recall"] is None \
            else _rounded(row["candidate_recall"] - row["previous_recall"])
        per_class.append(row)
    vs_previous = paired_difference(right["candidate"], right["previous"])
    return {
        "images": int(labels.numel()), "classnames": list(classnames),
        **{k: {"accuracy": m["accuracy"], "macro_recall": m["macro_recall"],
               "confusion_matrix": m["confusion_matrix"]} for k, m in metrics.items()},
        "per_class": per_class,
        "vs_previous": vs_previous,
        "vs_zero_shot": paired_difference(right["candidate"], right["zero_shot"]),
        "not_worse": None if vs_previous["high"] is None
        else vs_previous["difference"] >= 0 or vs_previous["high"] > 0,
        "rule": f"not worse unless (candidate - previous) accuracy is below zero and its "
                f"{round(100 * LEVEL)}% paired bootstrap interval does not reach above zero",
    }
