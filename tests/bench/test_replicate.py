import json

import numpy as np
import pytest
import torch

from bench import methods, replicate
from bench.domains import DOMAINS, to_model_input
from bench.protocol import Cell, make_cell_data
from clipfit_core.pretrain import load_fashion_mnist


@pytest.fixture(scope="module")
def split(fake_fmnist, tiny):
    (tr_x, tr_y), (te_x, te_y) = (load_fashion_mnist("train", fake_fmnist),
                                  load_fashion_mnist("test", fake_fmnist))
    cell = Cell("blur", "a", 1)
    idx = make_cell_data(cell, tr_y, te_y, shots=4, val_per_class=5, test_per_class=6)
    blur = DOMAINS["blur"]
    return methods.Split(
        train_rgb=blur(tr_x[idx.train]), train_labels=tr_y[idx.train],
        val=(to_model_input(tiny, blur(tr_x[idx.val])), tr_y[idx.val]),
        test_base=(to_model_input(tiny, blur(te_x[idx.test_base])), te_y[idx.test_base]),
        test_new=(to_model_input(tiny, blur(te_x[idx.test_new])), te_y[idx.test_new]),
        val_new=(to_model_input(tiny, blur(tr_x[idx.val_new])), tr_y[idx.val_new]),
        base_classes=cell.base_classes, new_classes=cell.new_classes)


@pytest.mark.parametrize("method", ["clipfit", "coop", "full_finetune"])
def test_trained_methods_score_and_leave_the_base_alone(tiny, split, method):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    result = getattr(methods, method)(tiny, split, lr=0.01, crop=0.5, epochs=2, seed=1)
    assert {"val", "val_new", "base", "new", "correct"} <= set(result)
    assert all(0 <= result[k] <= 1 for k in ("val", "val_new", "base", "new"))
    assert result["correct"]["base"].mean() == result["base"]
    assert len(result["correct"]["new"]) == len(split.test_new[1])
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_clipfit_alphas_interpolate_between_zero_shot_and_the_delta(tiny, split):
    result = methods.clipfit(tiny, split, lr=0.05, crop=0.5, epochs=3, seed=1,
                             alphas=(0.0, 0.5, 1.0))
    zs = methods.zero_shot(tiny, split)
    assert result["alphas"][1.0]["base"] == result["base"]
    for part in ("base", "new"):  # alpha 0 is the base model exactly
        assert (result["alphas"][0.0]["correct"][part] == zs["correct"][part]).all()


def test_zero_shot_and_linear_probe(tiny, split):
    zs = methods.zero_shot(tiny, split)
    assert 0 <= zs["base"] <= 1 and 0 <= zs["new"] <= 1
    lp = methods.linear_probe(tiny, split, weight_decays=(1e-4, 1e-3, 1e-2, 1e-1))
    assert lp["new"] is None and lp["weight_decay"] in (1e-4, 1e-3, 1e-2, 1e-1)
    assert lp["base"] > 0.5  # the fake classes differ in shape: a probe separates them


SELECT = {"lr_step": 3.0, "crop_step": 0.3, "crop_bounds": (0.1, 1.0)}


def test_selection_extends_a_grid_until_the_winner_is_interior():
    # validation accuracy peaks at lr 0.9 and crop 0.5, past the grid's top learning rate
    def score(lr, crop):
        return -abs(np.log(lr / 0.9)) - abs(crop - 0.5)
    choice = replicate.select({"lr": [0.03, 0.1, 0.3], "crop": [0.5, 0.8]}, score,
                              max_extensions=5, **SELECT)
    assert (choice["lr"], choice["crop"]) == (0.9, 0.5)
    assert choice["extensions"] == [{"lr": 0.9}, {"crop": 0.2}, {"lr": 2.7}]
    assert choice["lr_interior"] and choice["crop_interior"]
    # with no extensions allowed, the end is kept and the report says it is an end
    capped = replicate.select({"lr": [0.03, 0.1, 0.3], "crop": [0.5, 0.8]}, score,
                              max_extensions=0, **SELECT)
    assert capped["lr"] == 0.3 and not capped["lr_interior"] and capped["extensions"] == []


def test_selection_ties_and_crop_bounds():
    flat = replicate.select({"lr": [0.01, 0.1, 1.0], "crop": [0.8, 1.0]},
                            lambda lr, crop: 0.5, max_extensions=0, **SELECT)
    assert (flat["lr"], flat["crop"]) == (0.01, 1.0)  # smaller lr, then larger crop
    best_at_bound = replicate.select({"lr": [0.01, 0.1, 1.0], "crop": [0.7, 1.0]},
                                     lambda lr, crop: crop - abs(np.log10(lr) + 1),
                                     max_extensions=3, **SELECT)
    assert best_at_bound["crop"] == 1.0 and best_at_bound["extensions"] == []
    assert best_at_bound["crop_interior"]  # nothing lies past the bound


def test_selection_asks_only_for_the_points_it_needs():
    measured = {(0.1, 0.5): 0.6, (0.3, 0.5): 0.5, (0.1, 0.8): 0.4, (0.3, 0.8): 0.3}
    first = replicate.select({"lr": [0.1, 0.3], "crop": [0.5, 0.8]},
                             lambda lr, crop: measured.get((lr, crop)), max_extensions=3,
                             **SELECT)
    # lr 0.1 and crop 0.5 win at two ends: only the extension points are pending
    assert set(first["pending"]) == {(0.0333333, 0.5), (0.0333333, 0.8), (0.0333333, 0.2),
                                     (0.1, 0.2), (0.3, 0.2)}


def test_recipe_rule_keeps_new_classes_within_the_tolerance():
    s = replicate.setting
    candidates = {s(alpha=1.0, lr=0.1): {"val": 0.80, "val_new": 0.60},
                  s(alpha=0.5, lr=0.1): {"val": 0.75, "val_new": 0.645},
                  s(alpha=0.25, lr=0.1): {"val": 0.75, "val_new": 0.66},
                  s(alpha=0.5, lr=0.3): {"val": 0.70, "val_new": 0.70}}
    assert replicate.choose_recipe(candidates, 0.65, 0.01) == s(alpha=0.25, lr=0.1)
    assert replicate.choose_recipe(candidates, 0.80, 0.01) is None


def _fake_results(rng, cells, accuracy):
    """Like the study's: per seed one pool of 800 test images, the first half the base
    classes of split a and the new ones of split b."""
    out = {}
    for m, (pb, pn) in accuracy.items():
        out[m] = {}
        for c in cells:
            first, second = np.arange(400) + 1000 * c.seed, np.arange(400, 800) + 1000 * c.seed
            ids = {"base": first, "new": second} if c.split == "a" else \
                {"base": second, "new": first}
            right = {"base": rng.random(400) < pb, "new": rng.random(400) < pn}
            out[m][c] = {"base": right["base"].mean(), "new": right["new"].mean(),
                         "correct": right, "ids": ids}
    return out


def test_group_statistics_means_spreads_and_paired_intervals():
    rng = np.random.default_rng(0)
    cells = [Cell(d, s, seed) for d in ("blur", "sketch") for s in "ab" for seed in (1, 2, 3)]
    results = _fake_results(rng, cells, {"zero-shot": (0.6, 0.6), "clipfit": (0.9, 0.6),
                                         "coop": (0.7, 0.5)})
    stats = replicate.group_stats(results, cells, ["zero-shot", "clipfit", "coop", "absent"],
                                  boot=400)
    cf = stats["methods"]["clipfit"]
    assert cf["base"] == pytest.approx(np.mean([results["clipfit"][c]["base"] for c in cells]))
    assert cf["hm"] == pytest.approx(2 * cf["base"] * cf["new"] / (cf["base"] + cf["new"]))
    for key in ("base", "new", "hm"):
        lo, hi = cf[f"{key}_ci"]
        assert lo < cf[key] < hi and hi - lo < 0.1  # 12 cells x 400 images, 3 seeds
        assert 0 < cf[f"{key}_std"] < 0.05
    assert "absent" not in stats["methods"]
    assert replicate.group_stats(results, [], ["clipfit"])["methods"] == {}
    per_seed = stats["diff"]["clipfit - zero-shot"]["base"]["per_seed"]
    assert len(per_seed) == 3 and all(v > 0.1 for v in per_seed)
    d = stats["diff"]["clipfit - zero-shot"]["base"]
    assert d["mean"] == pytest.approx(cf["base"] - stats["methods"]["zero-shot"]["base"])
    assert d["ci"][0] > 0.2  # a 30-point gain is told apart from zero
    new = stats["diff"]["clipfit - zero-shot"]["new"]
    assert new["ci"][0] < 0 < new["ci"][1]  # the same new-class accuracy is not
    verdicts = {c["claim"]: c["verdict"] for c in replicate.claims(stats, "clipfit")}
    assert verdicts["HM >= zero-shot HM + 5"] == "holds"
    assert verdicts["HM >= CoOp HM"] == "holds"
    assert verdicts["new >= zero-shot new - 1"] in ("holds on the mean only",
                                                    "misses on the mean", "holds")


def test_verdicts():
    assert replicate.verdict({"mean": 0.06, "ci": [0.051, 0.07]}, 0.05) == "holds"
    assert replicate.verdict({"mean": 0.06, "ci": [0.04, 0.07]}, 0.05) == \
        "holds on the mean only"
    assert replicate.verdict({"mean": 0.04, "ci": [0.03, 0.06]}, 0.05) == "misses on the mean"
    assert replicate.verdict({"mean": 0.02, "ci": [0.01, 0.04]}, 0.05) == "does not hold"


def test_the_committed_protocol_is_complete():
    p = replicate.load_protocol()
    assert set(p["grids"]) == {*replicate.TRAINED, "linear-probe"}
    sizes = {len(g["lr"]) * len(g["crop"]) for m, g in p["grids"].items()
             if m != "linear-probe"}
    assert sizes == {len(p["grids"]["linear-probe"]["weight_decay"])}  # equal-size grids
    from bench.domains import DOMAINS, HELD_OUT_CANDIDATES, STUDY_DOMAINS
    assert p["domains"]["study"] == list(STUDY_DOMAINS)
    assert len(p["domains"]["held_out"]) >= 2
    assert set(p["domains"]["held_out"]) <= set(HELD_OUT_CANDIDATES) <= set(DOMAINS)


def test_whole_study_on_a_miniature_protocol(fake_fmnist, tmp_path):
    """The whole pipeline on clipfit-tiny and fake data (1 seed, 1-epoch runs, tiny grids):
    it must choose, evaluate, search the recipe and write both reports."""
    p = replicate.load_protocol()
    p["data"] |= {"model": "clipfit-tiny", "shots": 2, "val_per_class": 3,
                  "test_per_class": 4, "seeds": [1], "epochs": 1}
    p["domains"] |= {"study": ["blur"], "held_out": ["rotate"]}
    p["selection"]["cells"] = [["blur", "a"]]
    p["grids"] = {m: {"lr": [0.01, 0.1], "crop": [0.8]} for m in replicate.TRAINED} | {
        "linear-probe": {"weight_decay": [1e-3, 1e-1]}}
    p["selection"]["max_extensions"] = 1
    p["recipe"] |= {"lambdas": [8.0], "epochs": [1], "alphas": [0.5, 1.0]}
    p["report"]["bootstrap"] = 50
    report = replicate.run_study(tmp_path, p, jobs=1, weights_dir=None,
                                 data_root=str(fake_fmnist), progress=lambda m: None)
    for group in ("study", "held-out"):
        methods_seen = set(report["groups"][group]["methods"])
        assert {"zero-shot", "clipfit", "coop", "full-ft", "linear-probe"} <= methods_seen
    for s in report["selection"].values():
        assert len(s["val"]) in (2, 3) and s["lr"] in (0.00333333, 0.01, 0.1, 0.3)
    text = (tmp_path / "replication.md").read_text()
    assert "## Held-out domains (rotate)" in text and "Claims for ClipFit" in text
    assert json.loads((tmp_path / "replication.json").read_text())["seconds"] > 0
