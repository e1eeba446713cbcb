import pytest
import torch

from bench import methods
from bench.domains import DOMAINS, to_model_input
from bench.protocol import Cell, make_cell_data
from bench.replicate import summarize, to_markdown
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
        base_classes=cell.base_classes, new_classes=cell.new_classes)


@pytest.mark.parametrize("method", ["clipfit", "coop", "full_finetune"])
def test_trained_methods_score_and_leave_the_base_alone(tiny, split, method):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    result = getattr(methods, method)(tiny, split, lr=0.01, epochs=2, seed=1)
    assert set(result) == {"val", "base", "new"}
    assert all(0 <= v <= 1 for v in result.values())
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_zero_shot_and_linear_probe(tiny, split):
    zs = methods.zero_shot(tiny, split)
    assert 0 <= zs["base"] <= 1 and 0 <= zs["new"] <= 1
    lp = methods.linear_probe(tiny, split)
    assert lp["new"] is None and lp["weight_decay"] in (1e-4, 1e-3, 1e-2, 1e-1)
    assert lp["base"] > 0.5  # the fake classes differ in shape: a probe separates them


def test_summary_averages_cells_then_takes_the_harmonic_mean():
    cells = [Cell(d, s, 1) for d in ("blur", "sketch") for s in ("a", "b")]
    runs = {("clipfit", 0.01): {c: {"val": 0.5, "base": 0.8 if c.split == "a" else 0.6,
                                    "new": 0.4 if c.domain == "blur" else 0.6} for c in cells},
            ("linear-probe", None): {c: {"val": 0.5, "base": 0.9, "new": None} for c in cells}}
    summary = summarize(runs, cells)
    blur = summary[("clipfit", 0.01)]["domains"]["blur"]
    assert blur["base"] == pytest.approx(0.7) and blur["new"] == pytest.approx(0.4)
    assert blur["hm"] == pytest.approx(2 * 0.7 * 0.4 / 1.1)
    avg = summary[("clipfit", 0.01)]["average"]
    assert avg["new"] == pytest.approx(0.5) and avg["hm"] == pytest.approx(2 * .7 * .5 / 1.2)
    assert summary[("linear-probe", None)]["average"]["hm"] is None


def test_markdown_report_lists_every_method():
    row = {"base": 0.7, "new": 0.6, "hm": 0.646}
    report = {"average": {"zero-shot": row, "linear-probe": {"base": 0.8, "new": None,
                                                               "hm": None}},
              "domains": {"blur": {"zero-shot": row}}, "selected_lr": {"clipfit": 0.01},
              "seeds": [1, 2, 3], "splits": ["a", "b"], "epochs": 60, "shots": 16,
              "test_images_per_class": 200, "val_images_per_class": 50, "seconds": 600,
              "crop_scale": [0.8, 1.0],
              "lr_sweep": {"seeds": [1], "zero-shot": row, "clipfit": {
                  "lrs": [0.01], "hm_spread": 0.0,
                  "results": {"0.01": dict(row, val=0.7)}}}}
    text = to_markdown(report)
    assert "| zero-shot | 70.0 | 60.0 | 64.6 |" in text
    assert "| linear-probe | 80.0 | - | - |" in text
    assert "clipfit: HM spread 0.0 points" in text and "| 0.01 | 70.0 | 60.0 | 64.6 | 70.0 |" in text
