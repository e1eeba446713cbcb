import contextlib
import math

import pytest
import torch

from clipfit_core.classify import Classifier
from clipfit_core.data import load_dataset
from clipfit_core.delta import applied
from clipfit_core.evaluate import accuracy
from clipfit_core.params import trainable_parameters
from clipfit_core.train import (
    TrainConfig,
    TrainingCancelled,
    clipfit_loss,
    lr_at_epoch,
    train_clipfit,
)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_changes_every_selected_tensor_and_nothing_else(tiny, colour_train):
    before = snapshot(tiny.model)
    result = train_clipfit(tiny, load_dataset(colour_train), TrainConfig(epochs=3, lr=0.05))
    after = snapshot(tiny.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "base not restored"

    selected = set(trainable_parameters(tiny.model))
    assert set(result.delta.tensors) == selected
    with applied(tiny, result.delta):
        tuned = snapshot(tiny.model)
    for name in before:
        if name in selected:
            assert not torch.equal(before[name], tuned[name]), f"{name} did not train"
        else:
            assert torch.equal(before[name], tuned[name]), f"{name} changed"


def test_clipfit_lifts_accuracy_well_above_chance(tiny, colour_train, colour_test):
    test = load_dataset(colour_test)
    labels = [s.label for s in test.samples]
    images = [s.source for s in test.samples]
    templates = ["a photo of a {}."]
    clf = Classifier(tiny)
    zero_shot = accuracy(clf.logits(images, test.classnames, templates).argmax(-1), labels)
    result = train_clipfit(tiny, load_dataset(colour_train),
                           TrainConfig(epochs=40, lr=0.1, batch_size=16, templates=templates))
    tuned = accuracy(clf.logits(images, test.classnames, templates, result.delta).argmax(-1),
                     labels)
    assert tuned >= 0.75, (zero_shot, tuned)  # chance is 0.25
    assert tuned >= zero_shot + 0.3


def test_distillation_term_is_zero_before_the_first_step(tiny, colour_train):
    seen = []
    train_clipfit(tiny, load_dataset(colour_train), TrainConfig(epochs=2, lr=0.05),
                  on_progress=seen.append)
    assert abs(seen[0].kd) < 1e-6  # computed before the first update
    assert seen[-1].kd > 1e-6  # the text biases have moved since
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    _, _, kd = clipfit_loss(torch.zeros(2, 4), torch.tensor([0, 1]), feats, feats, 8.0)
    assert abs(kd.item()) < 1e-6


def test_loss_matches_the_paper_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    text = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    zs = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    total, ce, kd = clipfit_loss(logits, labels, text, zs, 8.0)
    expected_ce = -sum(torch.log_softmax(logits[i], 0)[labels[i]] for i in range(2)) / 2
    expected_kd = 1 - (text * zs).sum(-1).mean()
    assert torch.allclose(ce, expected_ce) and torch.allclose(kd, expected_kd, atol=1e-6)
    assert torch.allclose(total, expected_ce + 8 * expected_kd, atol=1e-5)


def test_same_seed_same_delta_other_seed_other_delta(tiny, colour_train):
    data = load_dataset(colour_train)
    a = train_clipfit(tiny, data, TrainConfig(epochs=2, lr=0.05, seed=3)).delta
    b = train_clipfit(tiny, data, TrainConfig(epochs=2, lr=0.05, seed=3)).delta
    c = train_clipfit(tiny, data, TrainConfig(epochs=2, lr=0.05, seed=4)).delta
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.id == b.id != c.id


def dassl_rates(epochs: int, lr: float, warmup: int, warmup_lr: float) -> list[float]:
    """The rate each epoch runs at under Dassl's constant warm-up around torch's own
    CosineAnnealingLR(T_max=epochs): the warm-up scheduler counts its epochs and holds
    ``warmup_lr``; from the end of the last warm-up epoch on, each end of epoch steps the
    cosine scheduler (created first, so it starts at the full rate)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    rates, counted = [], 0
    for _ in range(epochs):
        rates.append(warmup_lr if counted < warmup else cosine.get_last_lr()[0])
        optimizer.step()  # an epoch's training, before its scheduler step (as Dassl orders them)
        if counted < warmup:
            counted += 1  # the warm-up scheduler's own step
        else:
            cosine.step()
    return rates


@pytest.mark.parametrize("epochs,warmup", [(10, 1), (100, 1), (5, 2), (6, 0)])
def test_learning_rate_schedule_is_dassls(epochs, warmup):
    config = TrainConfig(epochs=epochs, lr=0.002, warmup_epochs=warmup)
    ours = [lr_at_epoch(config, e) for e in range(epochs)]
    assert ours == pytest.approx(dassl_rates(epochs, 0.002, warmup, config.warmup_lr),
                                 rel=1e-12, abs=1e-15)


def test_learning_rate_schedule_pins_the_papers_values():
    """CLIPFIT_METHOD.md: the first epoch after the warm-up at the full rate, post-warm-up
    epoch k at lr * (1 + cos(pi * (k - 1) / E)) / 2; for E = 10 the rates sum to 0.0110."""
    config = TrainConfig(epochs=10, lr=0.002)
    assert lr_at_epoch(config, 0) == 1e-5
    assert lr_at_epoch(config, 1) == 0.002
    for k in range(1, 10):
        assert lr_at_epoch(config, k) == pytest.approx(
            0.002 * (1 + math.cos(math.pi * (k - 1) / 10)) / 2)
    assert sum(lr_at_epoch(config, e) for e in range(10)) == pytest.approx(0.0110, abs=5e-5)


def test_progress_and_cancellation(tiny, colour_train):
    before = snapshot(tiny.model)
    seen = []
    with pytest.raises(TrainingCancelled):
        train_clipfit(tiny, load_dataset(colour_train), TrainConfig(epochs=5, batch_size=16),
                      on_progress=seen.append, should_cancel=lambda: len(seen) >= 3)
    assert [p.step for p in seen] == [1, 2, 3]
    assert seen[0].total_steps == 20 and seen[0].epochs == 5 and seen[0].lr == 1e-5
    assert seen[-1].images_per_sec > 0 and seen[-1].eta_seconds >= 0
    after = snapshot(tiny.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_validation_keeps_the_best_epoch(tiny, colour_train, colour_test):
    result = train_clipfit(tiny, load_dataset(colour_train), TrainConfig(epochs=6, lr=0.1),
                           val_set=load_dataset(colour_test))
    accs = [h["val_accuracy"] for h in result.history]
    assert len(accs) == 6
    best = max(accs)
    assert result.delta.config.metrics["val_accuracy"] == best
    assert accs[result.best_epoch - 1] == best
    assert all(a < best for a in accs[result.best_epoch:])  # last of ties


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="epochs must be >= 1.*lr must be > 0"):
        TrainConfig(epochs=0, lr=-1)
    with pytest.raises(ValueError, match="template"):
        TrainConfig(templates=["no placeholder"])


def test_a_run_resumed_from_a_checkpoint_ends_bit_identical(tiny, colour_train):
    from clipfit_core.train import Checkpoint

    data = load_dataset(colour_train)
    val = data.subset(data.samples[::4])
    config = TrainConfig(epochs=4, lr=0.05, batch_size=16, seed=5)
    straight = train_clipfit(tiny, data, config, val_set=val).delta

    class Crash(Exception):
        pass

    saved = []

    def crash_after_two(checkpoint):
        saved.append(checkpoint.to_bytes())
        if checkpoint.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        train_clipfit(tiny, data, config, val_set=val, on_checkpoint=crash_after_two)
    resumed = train_clipfit(tiny, data, config, val_set=val,
                            resume=Checkpoint.from_bytes(saved[-1])).delta
    assert set(resumed.tensors) == set(straight.tensors)
    for name, t in straight.tensors.items():
        assert torch.equal(resumed.tensors[name], t), name
    assert resumed.config.metrics == straight.config.metrics
    assert resumed.config.evaluation == straight.config.evaluation
    assert resumed.config.calibration == straight.config.calibration


def test_the_training_attention_layout_changes_no_value_and_is_removed(tiny):
    """frozen_attention_layout only re-lays the attention input in memory: the loss and the
    ClipFit gradients are the same as without it, and no hook stays on the model."""
    from clipfit_core.params import mark_trainable
    from clipfit_core.train import frozen_attention_layout

    params = mark_trainable(tiny.model)
    images = torch.randn(4, 3, tiny.image_size, tiny.image_size,
                         generator=torch.Generator().manual_seed(0))
    tokens = tiny.tokenizer(["a photo of a red.", "a photo of a blue."])

    def grads(layout: bool):
        tiny.model.zero_grad(set_to_none=True)
        context = frozen_attention_layout(tiny.model) if layout else contextlib.nullcontext()
        with context:
            assert layout == any(m._forward_pre_hooks for m in tiny.model.modules())
            loss = (tiny.model.encode_image(images).square().mean()
                    + tiny.model.encode_text(tokens).square().mean())
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in params.items()}

    try:
        plain_loss, plain = grads(False)
        laid_loss, laid = grads(True)
    finally:
        tiny.model.requires_grad_(False)
        tiny.model.zero_grad(set_to_none=True)
    assert torch.allclose(plain_loss, laid_loss, rtol=1e-6)
    assert all(torch.allclose(plain[n], laid[n], rtol=1e-4, atol=1e-7) for n in plain)
    assert not any(m._forward_pre_hooks for m in tiny.model.modules())


def test_alpha_moves_the_delta_toward_the_base_and_reports_its_accuracy(tiny, colour_train,
                                                                          colour_test):
    from clipfit_core.delta import toward_base

    data, val = load_dataset(colour_train), load_dataset(colour_test)
    full = train_clipfit(tiny, data, TrainConfig(epochs=3, lr=0.05, seed=2), val_set=val).delta
    half = train_clipfit(tiny, data, TrainConfig(epochs=3, lr=0.05, seed=2, alpha=0.5),
                         val_set=val).delta
    expected = toward_base(tiny, full, 0.5)
    for name, t in expected.tensors.items():
        assert torch.equal(half.tensors[name], t), name
    assert any(not torch.equal(half.tensors[n], full.tensors[n]) for n in full.tensors)
    assert half.config.hyperparameters["alpha"] == 0.5
    # the reported held-out accuracy is the moved delta's own
    logits = Classifier(tiny).logits([s.source for s in val.samples], val.classnames,
                                     half.config.templates, half)
    assert half.config.metrics["val_accuracy"] == accuracy(logits.argmax(-1),
                                                           [s.label for s in val.samples])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        TrainConfig(alpha=0)
