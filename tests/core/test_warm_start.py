"""Warm starts: training from a previous delta's values (train_clipfit(init=...))."""

from __future__ import annotations

import torch

from clipfit_core.config import TrainConfig
from clipfit_core.data import FewShotDataset, Sample, load_dataset
from clipfit_core.train import train_clipfit


def _only(dataset: FewShotDataset, names: list[str]) -> FewShotDataset:
    keep = [dataset.classnames.index(n) for n in names]
    return FewShotDataset(names, [Sample(s.source, keep.index(s.label), s.name)
                                  for s in dataset.samples if s.label in keep])


def test_a_warm_start_begins_where_the_parent_ended(tiny, colour_train, colour_test):
    train, test = load_dataset(colour_train), load_dataset(colour_test)
    three = ["blue", "green", "red"]
    parent = train_clipfit(tiny, _only(train, three), TrainConfig(epochs=40, lr=0.1),
                           val_set=_only(test, three)).delta
    # one epoch is the warm-up (lr 1e-5): the values hardly move from where they start
    one = TrainConfig(epochs=1, lr=0.1)
    same_train, same_test = _only(train, three), _only(test, three)
    cold = train_clipfit(tiny, same_train, one, val_set=same_test)
    warm = train_clipfit(tiny, same_train, one, val_set=same_test, init=parent.tensors)
    cold_acc, warm_acc = (r.history[0]["val_accuracy"] for r in (cold, warm))
    # measured: the parent 71%, warm 71%, cold 16% (the base's zero-shot)
    assert warm_acc >= parent.config.metrics["val_accuracy"] - 0.05
    assert warm_acc >= cold_acc + 0.4, (cold_acc, warm_acc)
    # the zero-shot baseline is still the base's, not the parent's
    assert warm.delta.config.metrics["zero_shot_val_accuracy"] == \
        cold.delta.config.metrics["zero_shot_val_accuracy"]
    for name, t in warm.delta.tensors.items():  # started from the parent's values
        assert torch.allclose(t, parent.tensors[name], atol=1e-3), name
    # new classes are allowed: all four colours (yellow is new); measured 27.5% vs 8.3% cold
    cold4, warm4 = (train_clipfit(tiny, train, one, val_set=test, init=init).history[0][
        "val_accuracy"] for init in (None, parent.tensors))
    assert warm4 >= cold4 + 0.1, (cold4, warm4)
