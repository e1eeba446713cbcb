"""What an adapter bought on its held-out split, class by class, against zero-shot, and how far
its probabilities can be trusted.

- **Evaluation report**: accuracy, per-class precision and recall (a class's recall is its
  per-class accuracy: the share of its images labelled right) and the confusion matrix, for
  the zero-shot model and the tuned one on the same images, counted by torchmetrics.
- **Calibration** by temperature scaling (Guo et al., "On Calibration of Modern Neural
  Networks", ICML 2017): one scalar T divides the tuned logits, fitted on the held-out split
  by minimising the negative log-likelihood, with a log-normal prior centred on T = 1
  (sigma 0.5 on log T; a held-out split of a few images, or one with no wrong answer, would
  otherwise drive T toward 0). It changes probabilities, never the ranking.
  The expected calibration error (15 equal-width bins, the paper's measure) is reported
  before and after.
- **Rejection threshold** (the rule): the calibrated top probability below which classify
  answers ``"unknown"`` is the 5th percentile of the top probabilities of the held-out images
  the tuned model labels right, so it turns away at most about 5% of correct answers on data
  like the held-out split; what it turns away of the wrong answers there is reported too.
- **Low confidence**: the share of held-out images whose calibrated top probability is below
  LOW_CONFIDENCE, the baseline the service compares what an adapter serves with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_precision,
    multiclass_recall,
)

from .classify import predict

ECE_BINS = 15
KEEP_CORRECT = 0.95  # share of the held-out split's right answers the threshold keeps
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
PRIOR_LOG_SIGMA = 0.5  # the prior on log T: T within [0.37, 2.7] at two sigma
LOW_CONFIDENCE = 0.5  # a top probability below this is a low-confidence answer


def _rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), digits)


def model_metrics(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict:
    """Accuracy, macro precision/recall, per class (images, precision, recall) and the
    confusion matrix (rows: true class, columns: predicted class) of one model's logits."""
    n = len(classnames)
    preds = logits.argmax(-1)
    matrix = multiclass_confusion_matrix(preds, labels, num_classes=n)
    precision = multiclass_precision(preds, labels, num_classes=n, average=None)
    recall = multiclass_recall(preds, labels, num_classes=n, average=None)
    support, predicted = matrix.sum(1), matrix.sum(0)
    per_class = [{
        "class": name,
        "images": int(support[i]),
        "precision": _rounded(precision[i]) if predicted[i] else None,  # never predicted
        "recall": _rounded(recall[i]) if support[i] else None,  # no held-out image
    } for i, name in enumerate(classnames)]
    present = [c for c in per_class if c["images"]]
    return {
        "accuracy": _rounded(matrix.diagonal().sum() / max(1, int(matrix.sum()))),
        "macro_recall": _rounded(sum(c["recall"] for c in present) / len(present))
        if present else None,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def evaluation_report(zero_shot_logits: torch.Tensor, tuned_logits: torch.Tensor,
                      labels: torch.Tensor, classnames: list[str]) -> dict:
    """Zero-shot and tuned side by side on the same held-out images."""
    zero = model_metrics(zero_shot_logits.float().cpu(), labels.cpu(), classnames)
    tuned = model_metrics(tuned_logits.float().cpu(), labels.cpu(), classnames)
    for z, t in zip(zero["per_class"], tuned["per_class"]):
        t["recall_gain"] = None if z["recall"] is None else _rounded(t["recall"] - z["recall"])
    return {"images": int(labels.numel()), "classnames": list(classnames),
            "zero_shot": zero, "tuned": tuned}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimises the held-out negative log-likelihood of softmax(logits / T),
    with a log-normal prior centred on T = 1 (maximum a posteriori)."""
    logits, labels = logits.detach().float().cpu(), labels.cpu()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100,
                                  line_search_fn="strong_wolfe")

    n = max(1, labels.numel())

    def closure():
        optimizer.zero_grad()
        # the log-normal prior: with no wrong answers the likelihood alone drives T to 0
        loss = F.cross_entropy(logits / log_t.exp(), labels) \
            + log_t ** 2 / (2 * PRIOR_LOG_SIGMA ** 2 * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    t = float(log_t.detach().exp())
    return min(MAX_TEMPERATURE, max(MIN_TEMPERATURE, t)) if math.isfinite(t) else 1.0


def calibration(logits: torch.Tensor, labels: torch.Tensor) -> dict | None:
    """Temperature, calibration error before and after, and the rejection threshold with
    what it turns away on the held-out split."""
    logits, labels = logits.detach().float().cpu(), labels.cpu()
    if not torch.isfinite(logits).all():  # a diverged run: nothing to calibrate
        return None
    n = logits.shape[-1]
    temperature = round(fit_temperature(logits, labels), 5)
    before, after = logits.softmax(-1), (logits / temperature).softmax(-1)
    top, preds = after.max(-1)
    right = preds == labels
    threshold = None
    if right.any():
        # "lower": one of the right answers' own values, so a small split does not turn away
        # more than its share; rounded down, so that value itself is kept
        exact = float(torch.quantile(top[right], 1 - KEEP_CORRECT, interpolation="lower"))
        threshold = math.floor(exact * 1e5) / 1e5
    # what classify would answer "unknown" on the held-out images (its one rule)
    rejected = torch.tensor([p.unknown for p in predict(
        logits, range(n), temperature=temperature, threshold=threshold, top_k=1)],
        dtype=torch.bool)
    return {
        "method": "temperature scaling on the held-out split",
        "temperature": temperature,
        "ece_before": _rounded(multiclass_calibration_error(
            before, labels, num_classes=n, n_bins=ECE_BINS)),
        "ece_after": _rounded(multiclass_calibration_error(
            after, labels, num_classes=n, n_bins=ECE_BINS)),
        "threshold": threshold,
        "threshold_rule": f"the {round(100 * (1 - KEEP_CORRECT))}th percentile of the "
                          "calibrated top probability of the held-out images labelled right",
        "held_out_rejected_right": _rounded(rejected[right].float().mean())
        if right.any() else None,
        "held_out_rejected_wrong": _rounded(rejected[~right].float().mean())
        if (~right).any() else None,
        "held_out_low_confidence": _rounded((top < LOW_CONFIDENCE).float().mean()),
        "images": int(labels.numel()),
    }


def stored_problems(config: dict) -> list[str]:
    """What is wrong with the report and calibration in a delta's config from elsewhere
    (part of ``delta.config_problems``): classification divides by the temperature and
    compares with the threshold, and the page draws the report, so both must have the shape
    this module writes."""
    problems = []
    cal = config.get("calibration")
    if cal is not None:
        t, thr = (cal.get("temperature"), cal.get("threshold")) if isinstance(cal, dict) \
            else (None, None)
        if not _number_in(t, MIN_TEMPERATURE, MAX_TEMPERATURE):
            problems.append(f"calibration.temperature must be a number from {MIN_TEMPERATURE} "
                            f"to {MAX_TEMPERATURE}")
        if thr is not None and not _number_in(thr, 0, 1):
            problems.append("calibration.threshold must be null or a number from 0 to 1")
    report = config.get("evaluation")
    if report is not None:
        n = len(config.get("classnames") or [])
        ok = isinstance(report, dict) and report.get("classnames") == config.get("classnames")
        for side in ("zero_shot", "tuned"):
            part = report.get(side) if ok else None
            ok = ok and isinstance(part, dict) and isinstance(part.get("per_class"), list) \
                and len(part["per_class"]) == n \
                and all(isinstance(c, dict) and all(
                    isinstance(v, (str, int, float, type(None))) for v in c.values())
                    for c in part["per_class"]) \
                and isinstance(part.get("confusion_matrix"), list) \
                and len(part["confusion_matrix"]) == n \
                and all(isinstance(row, list) and len(row) == n
                        and all(isinstance(v, int) for v in row)
                        for row in part["confusion_matrix"])
        if not ok:
            problems.append("evaluation does not have the shape of a clipfit report for these "
                            "classes")
    return problems


def _number_in(value, low: float, high: float) -> bool:
    """A real number (not a bool) from ``low`` to ``high``, however large or odd its type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and low <= float(value) <= high
    except OverflowError:  # an integer too large for a float
        return False
