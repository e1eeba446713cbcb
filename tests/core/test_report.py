"""The evaluation report and the calibration stored with a delta (clipfit_core.report)."""

from __future__ import annotations

import torch

from clipfit_core.config import TrainConfig
from clipfit_core.data import load_dataset
from clipfit_core.evaluate import accuracy
from clipfit_core.report import calibration, evaluation_report, fit_temperature, model_metrics
from clipfit_core.train import train_clipfit


def _logits_for(preds: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), n).float() * 5


def test_counts_precision_recall_and_the_confusion_matrix():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = [0, 0, 1, 1, 1, 1]  # class 2 is never predicted; class 1 takes 4 answers
    m = model_metrics(_logits_for(preds, 3), labels, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m["accuracy"] == round(4 / 6, 4)
    a, b, c = m["per_class"]
    assert (a["images"], a["precision"], a["recall"]) == (3, 1.0, round(2 / 3, 4))
    assert (b["precision"], b["recall"]) == (0.5, 1.0)
    assert c["precision"] is None and c["recall"] == 0.0  # never predicted: no precision
    assert m["macro_recall"] == round((2 / 3 + 1 + 0) / 3, 4)


def test_side_by_side_gains_per_class():
    labels = torch.tensor([0, 0, 1, 1])
    report = evaluation_report(_logits_for([1, 1, 1, 1], 3), _logits_for([0, 0, 1, 1], 3),
                               labels, ["a", "b", "c"])
    gains = {c["class"]: c["recall_gain"] for c in report["tuned"]["per_class"]}
    assert gains == {"a": 1.0, "b": 0.0, "c": None}  # c has no held-out image
    assert report["zero_shot"]["accuracy"] == 0.5 and report["tuned"]["accuracy"] == 1.0


def test_temperature_scaling_recovers_an_overconfident_scale():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 2
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(true_logits * 3, labels) - 3) < 0.3  # 3x too confident
    result = calibration(true_logits * 3, labels)
    assert result["ece_after"] < result["ece_before"] / 2
    right = (true_logits.argmax(-1) == labels)
    top = (true_logits * 3 / result["temperature"]).softmax(-1).max(-1).values
    # the rule: about 5% of the right answers fall below the threshold
    kept = (top[right] >= result["threshold"]).float().mean().item()
    assert 0.94 <= kept <= 0.96 and abs(result["held_out_rejected_right"] - (1 - kept)) < 1e-3
    assert result["held_out_rejected_wrong"] > 0.05  # wrong answers are less confident
    # the share of held-out answers below LOW_CONFIDENCE (what served answers are compared with)
    assert result["held_out_low_confidence"] == round((top < 0.5).float().mean().item(), 4)
    assert 0 < result["held_out_low_confidence"] < 1


def test_training_stores_the_report_and_calibration(tiny, colour_train, colour_test):
    val = load_dataset(colour_test)
    delta = train_clipfit(tiny, load_dataset(colour_train), TrainConfig(epochs=4, lr=0.1),
                          val_set=val).delta
    config, metrics = delta.config, delta.config.metrics
    report = config.evaluation
    assert report["images"] == len(val) and report["classnames"] == config.classnames
    # the same held-out images and weights as the stored accuracies
    assert report["tuned"]["accuracy"] == round(metrics["val_accuracy"], 4)
    assert report["zero_shot"]["accuracy"] == round(metrics["zero_shot_val_accuracy"], 4)
    assert sum(map(sum, report["tuned"]["confusion_matrix"])) == len(val)
    cal = config.calibration
    assert cal["temperature"] > 0 and 0 < cal["threshold"] <= 1
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    # stored in the delta's config: a saved delta carries it
    from clipfit_core.delta import DeltaConfig
    assert DeltaConfig.from_dict(config.to_dict()).calibration == cal
    # the tuned logits really are the delta's: recompute through the classifier
    from clipfit_core.classify import Classifier
    logits = Classifier(tiny).logits([s.source for s in val.samples], config.classnames,
                                     config.templates, delta)
    labels = torch.tensor([s.label for s in val.samples])
    assert round(accuracy(logits.argmax(-1), labels), 4) == report["tuned"]["accuracy"]


def test_an_error_free_small_split_does_not_drive_the_temperature_to_zero():
    logits = torch.tensor([[9.0, 1.0, 0.0], [0.5, 7.0, 1.0], [0.0, 2.0, 8.0], [6.0, 0.0, 3.0]])
    labels = torch.tensor([0, 1, 2, 0])
    t = fit_temperature(logits, labels)
    assert 0.3 < t < 1.0  # sharper than T = 1 (every answer right), but held by the prior
    assert calibration(logits, labels)["held_out_rejected_wrong"] is None  # none were wrong


def test_a_small_split_keeps_its_right_answers_and_nan_logits_are_not_calibrated():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 3, generator=g) * 3
    labels = logits.argmax(-1)  # seven right answers
    result = calibration(logits, labels)
    # the threshold is the smallest right answer's own value (rounded down): none turned away
    assert result["held_out_rejected_right"] == 0.0
    top = (logits / result["temperature"]).softmax(-1).max(-1).values
    assert (top >= result["threshold"]).all()
    assert calibration(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 2, 0])) is None
