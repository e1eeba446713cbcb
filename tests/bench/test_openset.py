"""bench.openset on clipfit-tiny and the synthetic colours (the real run needs clipfit-mini)."""

from __future__ import annotations

from bench.openset import run_seed
from clipfit_core.synthetic import write_dataset


def test_one_seed_reports_known_and_novel_unknown_shares(tiny, tmp_path):
    colours = ["red", "green", "blue", "yellow", "purple"]
    train = write_dataset(tmp_path / "train", colours, per_class=16, seed=0)
    test = write_dataset(tmp_path / "test", colours, per_class=10, seed=3)
    row = run_seed(tiny, train, test, novel=2, seed=0,
                   settings={"epochs": 20, "lr": 0.1, "batch_size": 16, "val_fraction": 0.25})
    assert len(row["known"]) == 3 and len(row["novel"]) == 2
    assert not set(row["known"]) & set(row["novel"])
    assert row["held_out_images"] == 12  # 4 per known class
    assert 0 < row["threshold"] < 1 and row["temperature"] > 0
    # the adapter learned the known colours (whether it turns away more of the colours it
    # never saw is measured, with a margin, in tests/service/test_evaluation.py)
    assert row["held_out_tuned"] > row["held_out_zero_shot"]
    assert row["test_accuracy_known"] >= 0.7
    for share in ("unknown_share_known", "unknown_share_novel"):
        assert 0 <= row[share] <= 1
    assert row["accuracy_of_kept"] >= row["test_accuracy_known"] - 0.05
