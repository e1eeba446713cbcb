"""The ClipFit training loop: one readable loop, progress and cancellation via callbacks.

Objective (CLIPFIT_METHOD.md):
    logits = exp(logit_scale) * cos(image_feature, text_feature_c)
    loss   = cross_entropy(logits, y) + lambda * (1 - mean_c cos(text_feature_c, zs_text_feature_c))
with the class text features recomputed every step through the tuned text encoder, and the
zero-shot text features computed once, before the first step, from the same model.
Recipe: SGD (momentum 0.9, weight decay 5e-4), one warm-up epoch at a constant 1e-5, then a
cosine schedule over all epochs; batch 32; random resized crop + flip.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .classify import class_features_from_tokens, logits_for, tokenize_prompts
from .config import TrainConfig
from .data import FewShotDataset, ImageDataset, open_image
from .delta import Delta, DeltaConfig, extract_delta, restore
from .evaluate import accuracy
from .models import BaseModel
from .params import mark_trainable
from .report import calibration, evaluation_report


class TrainingCancelled(RuntimeError):
    """Raised when ``should_cancel`` asked to stop; the base model is restored first."""


@dataclass
class TrainProgress:
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, over the whole run
    total_steps: int
    loss: float
    ce: float
    kd: float
    lr: float
    images_per_sec: float
    eta_seconds: float


@dataclass
class Checkpoint:
    """Everything a run needs to go on after ``epoch`` completed epochs exactly as if it had
    not stopped: the trained tensors, the optimizer's momentum, the random states (the
    augmentation's and the loader's shuffling) and the best epoch so far. Small: three
    copies of the trained tensors (46k numbers each for ViT-B/16) and a few hundred bytes."""

    epoch: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict
    rng: torch.Tensor
    loader_rng: torch.Tensor
    history: list[dict]
    best: dict  # acc, epoch, tensors (or None)
    zero_shot_val: float | None
    step: int
    seen: int

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(dataclasses.asdict(self), buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        return cls(**torch.load(io.BytesIO(data), weights_only=True))


@dataclass
class TrainResult:
    delta: Delta
    history: list[dict]  # one entry per epoch: loss, lr, val_accuracy (when validating)
    best_epoch: int
    seconds: float
    images_per_sec: float


def lr_at_epoch(config: TrainConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: constant warm-up, then cosine over all epochs.

    Exactly Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=epochs)``,
    which the reference code uses: the cosine scheduler is stepped once per epoch only after
    the warm-up, so the first epoch after it runs at the full rate, and epoch e >= warmup gets
    lr * (1 + cos(pi * (e - warmup) / epochs)) / 2 (post-warm-up epoch k = e - warmup + 1 at
    cos(pi * (k - 1) / epochs)). For 10 epochs at lr 0.002 the rates sum to about 0.0110.
    """
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    steps = epoch - config.warmup_epochs  # cosine steps taken before this epoch
    return 0.5 * config.lr * (1 + math.cos(math.pi * steps / config.epochs))


def clipfit_loss(
    logits: torch.Tensor, labels: torch.Tensor, text_feats: torch.Tensor,
    zs_text_feats: torch.Tensor, lambda_kd: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, cross-entropy, distillation term) of the ClipFit objective."""
    ce = F.cross_entropy(logits.float(), labels)
    kd = 1.0 - F.cosine_similarity(text_feats.float(), zs_text_feats, dim=-1, eps=1e-7).mean()
    return ce + lambda_kd * kd, ce, kd


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext(), None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _seq_first_contiguous(module, args, kwargs):
    """Forward pre-hook of a batch-first ``nn.MultiheadAttention`` while gradients flow:
    hand it (N, L, D) inputs whose (L, N, D) transpose, which it makes first thing, is
    contiguous. Its input projection then runs as one matrix product. Otherwise, with frozen
    projection weights and an input that needs a gradient, PyTorch's matmul does not fold the
    batch and broadcasts the weight into a batched product instead: about 3x slower on a CPU
    (forward + backward of a ViT-B attention block: 170 ms against 101 ms at batch 8), and it
    is most of a ClipFit step's time. Same values: only the memory layout changes."""
    if not (module.batch_first and torch.is_grad_enabled() and args and args[0].dim() == 3):
        return None
    query, key, value = (list(args) + [kwargs.get("key"), kwargs.get("value")])[:3]
    if not (query is key is value):  # self-attention only (all ClipFit towers)
        return None
    x = query.transpose(0, 1).contiguous().transpose(0, 1)
    return (x, x, x, *args[3:]), kwargs


@contextlib.contextmanager
def frozen_attention_layout(model: torch.nn.Module):
    """While training only some tensors: :func:`_seq_first_contiguous` on every attention."""
    handles = [m.register_forward_pre_hook(_seq_first_contiguous, with_kwargs=True)
               for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def train_clipfit(
    base: BaseModel,
    train_set: FewShotDataset,
    config: TrainConfig,
    *,
    val_set: FewShotDataset | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    init: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ClipFit on ``train_set``; return the delta. The base model is left as it was.

    With ``val_set``, accuracy is measured after every epoch and the delta of the best epoch
    is kept (the last one on ties). ``on_checkpoint`` receives a checkpoint after every epoch;
    a run given one as ``resume`` (same data, config and base) continues from it and ends
    with the same delta, bit for bit, as a run that never stopped (CPU; on CUDA, up to the
    kernels' own nondeterminism). ``init`` (a previous delta's tensors on the same base) is a
    warm start: training begins from those values instead of the base's; the zero-shot
    baseline and ``alpha`` still refer to the base.
    """
    if len(train_set) == 0:
        raise ValueError("training set is empty")
    model, device = base.model, base.device
    classnames, templates = list(train_set.classnames), list(config.templates)
    params = mark_trainable(model, text=config.train_text, image=config.train_image)
    originals = {n: p.detach().clone() for n, p in params.items()}
    start = time.perf_counter()
    rng_devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), frozen_attention_layout(model):
            torch.manual_seed(config.seed)
            return _train(base, train_set, val_set, config, classnames, templates, params,
                          on_progress, should_cancel, start, resume, on_checkpoint, originals,
                          init)
    finally:
        restore(base, originals)
        model.requires_grad_(False)
        model.eval()


def _train(base, train_set, val_set, config, classnames, templates, params,
           on_progress, should_cancel, start, resume, on_checkpoint, originals,
           init=None) -> TrainResult:
    model, device = base.model, base.device
    n_templates = len(templates)
    tokens = tokenize_prompts(base, classnames, templates)
    model.eval()
    with torch.no_grad():  # computed once: no second model copy, no per-step cost
        zs_text = class_features_from_tokens(model, tokens, n_templates).float()

    loader = make_train_loader(base, train_set, config, device)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.SGD(params.values(), lr=lr_at_epoch(config, 0),
                                momentum=config.momentum, weight_decay=config.weight_decay)
    autocast, scaler = _autocast(device, config.amp)
    val_eval = _val_evaluator(base, val_set, classnames, templates) if val_set else None
    history: list[dict] = []
    best_acc, best_epoch, best_tensors = -1.0, config.epochs, None
    step, seen, train_start, first_epoch = 0, 0, time.perf_counter(), 0
    if resume is None:
        zero_shot_val = val_eval() if val_eval is not None else None  # before the first step
        if init is not None:  # a warm start: from a previous delta's values, not the base's
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(init[name].to(p.device, p.dtype))
    else:  # go on where the checkpoint stopped, with its random states
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(resume.tensors[name].to(p.device, p.dtype))
        optimizer.load_state_dict(resume.optimizer)
        torch.set_rng_state(resume.rng)
        loader.generator.set_state(resume.loader_rng)
        history, zero_shot_val = list(resume.history), resume.zero_shot_val
        best_acc, best_epoch = resume.best["acc"], resume.best["epoch"]
        best_tensors = resume.best["tensors"]
        step, seen, first_epoch = resume.step, resume.seen, resume.epoch

    for epoch in range(first_epoch, config.epochs):
        lr = lr_at_epoch(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        epoch_loss = 0.0
        for images, labels in loader:
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"cancelled at epoch {epoch + 1}, step {step + 1}")
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast:
                text_feats = class_features_from_tokens(model, tokens, n_templates)
                img_feats = F.normalize(model.encode_image(images), dim=-1)
                logits = logits_for(base, img_feats.float(), text_feats.float())
                loss, ce, kd = clipfit_loss(logits, labels, text_feats, zs_text, config.lambda_kd)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()

            step += 1
            seen += labels.shape[0]
            epoch_loss += loss.item()
            if on_progress is not None:
                elapsed = time.perf_counter() - train_start
                on_progress(TrainProgress(
                    epoch=epoch + 1, epochs=config.epochs, step=step, total_steps=total_steps,
                    loss=loss.item(), ce=ce.item(), kd=kd.item(), lr=lr,
                    images_per_sec=seen / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=elapsed / step * (total_steps - step),
                ))
        record = {"epoch": epoch + 1, "lr": lr, "loss": epoch_loss / max(1, steps_per_epoch)}
        if val_eval is not None:
            record["val_accuracy"] = acc = val_eval()
            if acc >= best_acc:
                best_acc, best_epoch, best_tensors = acc, epoch + 1, extract_delta(model)
        history.append(record)
        if on_checkpoint is not None and epoch + 1 < config.epochs:
            on_checkpoint(Checkpoint(
                epoch=epoch + 1, tensors=extract_delta(model), optimizer=copy.deepcopy(optimizer.state_dict()),
                rng=torch.get_rng_state(), loader_rng=loader.generator.get_state(),
                history=list(history), zero_shot_val=zero_shot_val, step=step, seen=seen,
                best={"acc": best_acc, "epoch": best_epoch, "tensors": best_tensors}))

    train_seconds = time.perf_counter() - train_start
    tensors = best_tensors if best_tensors is not None else extract_delta(model)
    if config.alpha != 1.0:
        # The delta users get is moved toward the base (clipfit_core.delta.toward_base), and
        # its held-out accuracy is that of the moved values.
        tensors = {name: start + config.alpha * (t - start) for name, t in tensors.items()
                   for start in [originals[name].detach().to("cpu", torch.float32)]}
        if val_eval is not None:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(tensors[name])
            best_acc = val_eval()
    metrics = {"best_epoch": best_epoch, "final_loss": history[-1]["loss"]}
    evaluation = calibrated = None
    if val_eval is not None:
        metrics |= {"val_accuracy": best_acc, "zero_shot_val_accuracy": zero_shot_val,
                    "val_images": len(val_set)}
        evaluation, calibrated = _held_out_report(params, originals, tensors, val_eval,
                                                  classnames)
    delta = Delta(tensors, DeltaConfig(
        base_model=base.spec, base_fingerprint=base.fingerprint, classnames=classnames,
        templates=templates, arch=base.arch, pretrained=base.pretrained,
        hyperparameters=config.to_dict() | {"train_images": len(train_set)},
        metrics=metrics, evaluation=evaluation, calibration=calibrated,
    ))
    return TrainResult(delta=delta, history=history, best_epoch=best_epoch,
                       seconds=time.perf_counter() - start,
                       images_per_sec=seen / train_seconds if train_seconds > 0 else 0.0)


def _held_out_report(params, originals, tensors, val_eval, classnames) -> tuple[dict, dict]:
    """The evaluation report (zero-shot vs the delta being returned) and the delta's
    calibration, both on the held-out split (``clipfit_core.report``)."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(originals[name])
        zero_shot = val_eval.logits()
        for name, p in params.items():
            p.copy_(tensors[name])
        tuned = val_eval.logits()
    return (evaluation_report(zero_shot, tuned, val_eval.labels, classnames),
            calibration(tuned, val_eval.labels))


def make_train_loader(base: BaseModel, train_set: FewShotDataset, config: TrainConfig,
                      device: torch.device) -> torch.utils.data.DataLoader:
    """Shuffled, augmented batches as the recipe asks (seeded by ``config.seed``)."""
    workers = config.num_workers
    if workers < 0:
        workers = 0 if device.type == "cpu" else min(8, torch.get_num_threads())
    # Few-shot sets are small: in-process loading decodes each image once, not every epoch.
    dataset = ImageDataset(train_set.samples, base.train_transform(config.crop_scale),
                           preload=workers == 0)
    generator = torch.Generator().manual_seed(config.seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
        drop_last=len(dataset) >= config.batch_size,  # as Dassl: full batches when possible
        num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def _val_evaluator(base, val_set, classnames, templates) -> Callable[[], float]:
    """Accuracy of the current weights on ``val_set``; images are preprocessed once. Its
    ``logits()`` and ``labels`` serve the evaluation report."""
    from .classify import class_text_features, image_features

    transform = base.eval_transform()
    pixels = torch.stack([transform(open_image(s.source)) for s in val_set.samples])
    labels = torch.tensor([s.label for s in val_set.samples])

    def logits() -> torch.Tensor:
        base.model.eval()
        with torch.no_grad():
            text = class_text_features(base, classnames, templates)
            return torch.cat([logits_for(base, image_features(base, chunk), text).float().cpu()
                              for chunk in pixels.split(128)])

    def evaluate() -> float:
        return accuracy(logits().argmax(-1), labels)

    evaluate.logits, evaluate.labels = logits, labels
    return evaluate
