"""bench.loop's logic on a small run: a real `clipfit serve` (clipfit-tiny, SQLite, its
in-process worker), synthetic colour images instead of Fashion-MNIST, one seed, two short
rounds. The figures are the benchmark's; this checks that the loop really captures, labels,
retrains, compares and promotes, that the random arm gets as many images, and that the test
set is never captured."""

import io
import json

import numpy as np

from bench.loop import ARMS, Data, Pool, main
from clipfit_core.synthetic import COLOURS, render


def pool(classes: list[str], per_class: int, seed: int) -> Pool:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(per_class):
        for c, name in enumerate(classes):
            buf = io.BytesIO()
            render(COLOURS[name], 32, rng).save(buf, "PNG")
            images.append(buf.getvalue())
            labels.append(c)
    return Pool(images, labels)


def test_loop_runs_every_step_on_a_real_service(tmp_path):
    classes = list(COLOURS)[:4]
    data = Data(classes, train=pool(classes, 24, seed=1), test=pool(classes, 5, seed=2))
    out = tmp_path / "loop"
    result = main(["--model", "clipfit-tiny", "--seeds", "0", "--rounds", "2", "--shots", "4",
                   "--stream", "32", "--cap", "6", "--below", "1.0", "--rate", "0",
                   "--epochs", "3", "--lr", "0.1", "--out", str(out)], data=data)
    stored = json.loads((out / "loop.json").read_text())["summary"]
    assert (stored["promotions"], stored["worse_promotions"]) == \
        (result["summary"]["promotions"], result["summary"]["worse_promotions"])
    assert "| round | loop: newest" in (out / "loop.md").read_text()
    [seed] = result["seeds"]
    assert len(seed["rounds"]) == 3 and 0 <= seed["zero_shot"] <= 1
    for r in seed["rounds"][1:]:
        # below_confidence 1.0 keeps everything: the cap (6 a round) decides
        assert r["loop"]["captured"] == 6 and r["loop"]["rules"] == {"below_confidence": 6}
        assert r["random"]["captured"] == 6 and r["random"]["rules"] == {"sample_rate": 6}
        for arm in ARMS:
            part = r[arm]
            assert part["version"] and part["version"] != part["previous"]
            assert part["benchmark_images"] and part["vs_previous"]["images"] == \
                part["benchmark_images"]
            assert 0 <= part["newest"] <= 1 and 0 <= part["prod"] <= 1
            if part["promoted"]:
                assert part["prod"] == part["newest"]
            else:
                assert part["prod"] == part["previous_test"]
    table = result["summary"]["table"]
    assert [row["round"] for row in table] == [0, 1, 2]
    assert table[0]["loop_newest"] == table[0]["random_newest"]  # equal starts
