"""The version comparison: paired differences, their interval, the promotion rule."""

import pytest
import torch

from clipfit_core.compare import paired_difference, version_comparison


def right(pattern: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in pattern])


def test_identical_models_differ_by_exactly_zero():
    d = paired_difference(right("1101"), right("1101"))
    assert d == {"images": 4, "difference": 0.0, "low": 0.0, "high": 0.0, "level": 0.95,
                 "only_new_right": 0, "only_old_right": 0}


def test_interval_is_paired_deterministic_and_brackets_the_difference():
    new, old = right("1" * 40 + "0" * 10), right("1" * 30 + "0" * 20)
    d = paired_difference(new, old)
    assert d["difference"] == pytest.approx(0.2)
    assert d["only_new_right"] == 10 and d["only_old_right"] == 0
    assert 0 < d["low"] < 0.2 < d["high"] <= 0.4
    assert paired_difference(new, old) == d  # the same seed, the same interval
    # pairing: the same accuracies with disagreements on both sides give a wider interval
    shuffled = right("0" * 15 + "1" * 30 + "0" * 5)
    wide = paired_difference(new, shuffled)
    assert wide["difference"] == pytest.approx(0.2)
    assert wide["high"] - wide["low"] > d["high"] - d["low"]


def test_chunked_resampling_matches_shape_rules():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(right("11"), right("1"))
    big = paired_difference(torch.ones(100_000, dtype=torch.bool),
                            torch.zeros(100_000, dtype=torch.bool), resamples=50)
    assert big["difference"] == big["low"] == big["high"] == 1.0
    assert paired_difference(right(""), right(""))["difference"] is None


def logits_for(preds: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), classes).float() * 5


def test_version_comparison_side_by_side_and_the_rule():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    candidate = logits_for([0, 0, 1, 1, 2, 0], 3)  # 5/6
    previous = logits_for([0, 1, 1, 0, 2, 0], 3)  # 3/6
    zero = logits_for([1, 1, 1, 0, 0, 0], 3)  # 1/6
    report = version_comparison(candidate, previous, zero, labels, ["a", "b", "c"])
    assert report["images"] == 6
    assert (report["candidate"]["accuracy"], report["previous"]["accuracy"],
            report["zero_shot"]["accuracy"]) == pytest.approx((5 / 6, 0.5, 1 / 6), abs=1e-4)
    b = report["per_class"][1]
    assert b == {"class": "b", "images": 2, "candidate_recall": 1.0, "previous_recall": 0.5,
                 "zero_shot_recall": 0.5, "change": 0.5}
    assert report["vs_previous"]["difference"] == pytest.approx(2 / 6, abs=1e-4)
    assert report["not_worse"] is True
    # swapped: the candidate is the worse one, on every disagreement: not promoted
    many = torch.arange(60) % 3
    good, bad = logits_for(many.tolist(), 3), logits_for(((many + 1) % 3).tolist(), 3)
    worse = version_comparison(bad, good, zero.repeat(10, 1), many, ["a", "b", "c"])
    assert worse["vs_previous"]["high"] < 0 and worse["not_worse"] is False
    # within chance: 3 images won and 4 lost of 60 is not "worse beyond the interval"
    wrong = lambda idx: logits_for([(y + 1) % 3 if i in idx else y
                                    for i, y in enumerate(many.tolist())], 3)
    close = version_comparison(wrong({10, 11, 12, 13}), wrong({0, 1, 2}), zero.repeat(10, 1),
                               many, ["a", "b", "c"])
    assert (close["vs_previous"]["only_new_right"], close["vs_previous"]["only_old_right"]) \
        == (3, 4)
    assert close["vs_previous"]["difference"] < 0 < close["vs_previous"]["high"]
    assert close["not_worse"] is True
    # one image lost and none won: the interval's top is exactly zero, so it is worse
    one_off = version_comparison(wrong({5}), good, zero.repeat(10, 1), many, ["a", "b", "c"])
    assert one_off["vs_previous"]["high"] == 0 and one_off["not_worse"] is False
    same = version_comparison(previous, previous, zero, labels, ["a", "b", "c"])
    assert same["vs_previous"]["high"] == 0 and same["not_worse"] is True
