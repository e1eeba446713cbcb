"""The methods compared in the replication study, on identical data for each cell.

ClipFit and its two ablations run through ``clipfit_core.train_clipfit`` (the product's own
code path). The baselines live here: CoOp (learned context vectors), full fine-tuning of both
towers, and a linear probe on frozen image features. All share the recipe's data pipeline
(random resized crop + flip, batch 32) and epoch count; each gets its own learning rate and
crop scale (the lower bound of the random resized crop's area), chosen by the study.

Every score carries, beside the accuracies, which test images were right (``correct``), for
the study's bootstrap intervals.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipfit_core.classify import class_text_features, encode_text, image_features
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.delta import applied, toward_base
from clipfit_core.models import BaseModel
from clipfit_core.pretrain import ITEMS
from clipfit_core.recipes import PAPER
from clipfit_core.train import TrainConfig, lr_at_epoch, make_train_loader, train_clipfit

TEMPLATE = "a photo of a {}."


@dataclass
class Split:
    """Preprocessed images of one cell: (pixels, labels as Fashion-MNIST class ids)."""

    train_rgb: np.ndarray
    train_labels: np.ndarray
    val: tuple[torch.Tensor, np.ndarray]
    test_base: tuple[torch.Tensor, np.ndarray]
    test_new: tuple[torch.Tensor, np.ndarray]
    val_new: tuple[torch.Tensor, np.ndarray]
    base_classes: tuple[int, ...]
    new_classes: tuple[int, ...]

    def few_shot_set(self) -> FewShotDataset:
        index = {c: i for i, c in enumerate(self.base_classes)}
        samples = [Sample(Image.fromarray(rgb), index[int(y)])
                   for rgb, y in zip(self.train_rgb, self.train_labels)]
        return FewShotDataset([ITEMS[c] for c in self.base_classes], samples)


@torch.no_grad()
def correct_among(base: BaseModel, text10: torch.Tensor, data, classes) -> np.ndarray:
    """Which images are classified right among ``classes`` only (the protocol's 5-way base /
    new tests): a boolean per image."""
    pixels, labels = data
    feats = torch.cat([image_features(base, chunk) for chunk in pixels.split(1000)])
    classes = list(classes)
    preds = (feats @ text10[classes].T.to(feats.device)).argmax(-1).cpu().numpy()
    return np.asarray(classes)[preds] == labels


def score(base: BaseModel, text10: torch.Tensor, split: Split, test: bool = True) -> dict:
    """Accuracies on the validation images (base and new classes: choices only) and, with
    ``test``, on the test images (base and new: reports only) with their correctness. A run
    made to choose something is scored without ``test``: it never sees a test image."""
    out = {"val": float(correct_among(base, text10, split.val, split.base_classes).mean()),
           "val_new": float(correct_among(base, text10, split.val_new,
                                          split.new_classes).mean()),
           "base": None, "new": None, "correct": None}
    if test:
        right = {"base": correct_among(base, text10, split.test_base, split.base_classes),
                 "new": correct_among(base, text10, split.test_new, split.new_classes)}
        out |= {"base": float(right["base"].mean()), "new": float(right["new"].mean()),
                "correct": right}
    return out


def zero_shot(base: BaseModel, split: Split, test: bool = True) -> dict:
    return score(base, class_text_features(base, ITEMS, [TEMPLATE]), split, test)


def clipfit(base: BaseModel, split: Split, *, lr: float, crop: float, epochs: int, seed: int,
            text: bool = True, image: bool = True, lambda_kd: float = PAPER.values["lambda"],
            alphas: tuple[float, ...] = (), test: bool = True) -> dict:
    """ClipFit's score; with ``alphas``, also the score of the delta moved toward zero-shot
    by each factor (``clipfit_core.delta.toward_base``) under ``"alphas"``."""
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed, templates=[TEMPLATE],
                         train_text=text, train_image=image, crop_min=crop,
                         lambda_kd=lambda_kd)
    delta = train_clipfit(base, split.few_shot_set(), config).delta

    def scored(d):
        with applied(base, d):
            return score(base, class_text_features(base, ITEMS, [TEMPLATE]), split, test)

    result = scored(delta)
    if alphas:
        result["alphas"] = {a: dict(result) if a == 1.0 else scored(toward_base(base, delta, a))
                            for a in alphas}
    return result


def _epochs_of_batches(base, split, config):
    loader = make_train_loader(base, split.few_shot_set(), config, base.device)
    for epoch in range(config.epochs):
        yield epoch, loader


def coop(base: BaseModel, split: Split, *, lr: float, crop: float, epochs: int, seed: int,
         n_ctx: int = 4, test: bool = True) -> dict:
    """CoOp: ``n_ctx`` context vectors shared by all classes, initialised from the embedding
    of "a photo of a", trained with SGD on the recipe's schedule; the encoders stay frozen."""
    model = base.model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        init = base.tokenizer(["a photo of a"])[0, 1:1 + n_ctx]
        ctx = model.token_embedding(init.to(base.device)).detach().clone().requires_grad_(True)
        tokens = base.tokenizer([" ".join(["X"] * n_ctx) + f" {ITEMS[c]}." for c in range(10)])
        tokens = tokens.to(base.device)
        with torch.no_grad():
            frozen = model.token_embedding(tokens)

        def text_features(classes) -> torch.Tensor:
            emb = frozen[list(classes)].clone()
            emb[:, 1:1 + n_ctx] = ctx
            return F.normalize(encode_text(model, tokens[list(classes)], emb), dim=-1)

        config = TrainConfig(epochs=epochs, lr=lr, seed=seed, crop_min=crop)
        optimizer = torch.optim.SGD([ctx], lr=lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)  # ClipFit's optimizer
        scale = model.logit_scale.exp().detach()
        for epoch, loader in _epochs_of_batches(base, split, config):
            for group in optimizer.param_groups:
                group["lr"] = lr_at_epoch(config, epoch)
            for images, labels in loader:
                text = text_features(split.base_classes)
                img = F.normalize(model.encode_image(images.to(base.device)), dim=-1)
                loss = F.cross_entropy(scale * img @ text.T, labels.to(base.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return score(base, text_features(range(10)), split, test)


def full_finetune(base: BaseModel, split: Split, *, lr: float, crop: float, epochs: int,
                  seed: int, weight_decay: float = 0.1, test: bool = True) -> dict:
    """Every weight of both towers trained (AdamW, cross-entropy on CLIP logits with text
    features recomputed each step, the recipe's warm-up + cosine), on a copy of the base.

    Except the token-embedding table (49,408 x 128): only the rows of the ~10 tokens in the
    class prompts could change, and updating the whole table every step would be most of the
    cost of a step.
    """
    tuned = copy.deepcopy(base)
    model = tuned.model
    model.requires_grad_(True)
    model.logit_scale.requires_grad_(False)
    model.token_embedding.requires_grad_(False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = TrainConfig(epochs=epochs, lr=lr, seed=seed, warmup_lr=lr / 100,
                             crop_min=crop)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        tokens = tuned.tokenizer([TEMPLATE.format(ITEMS[c]) for c in split.base_classes])
        tokens = tokens.to(base.device)
        scale = model.logit_scale.exp().detach()
        for epoch, loader in _epochs_of_batches(tuned, split, config):
            for group in optimizer.param_groups:
                group["lr"] = lr_at_epoch(config, epoch)
            model.train()
            for images, labels in loader:
                text = F.normalize(encode_text(model, tokens), dim=-1)
                img = F.normalize(model.encode_image(images.to(base.device)), dim=-1)
                loss = F.cross_entropy(scale * img @ text.T, labels.to(base.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval()
    model.requires_grad_(False)
    return score(tuned, class_text_features(tuned, ITEMS, [TEMPLATE]), split, test)


def linear_probe(base: BaseModel, split: Split, *, weight_decays) -> dict:
    """Multinomial logistic regression on frozen, normalized image features of the shots
    (L-BFGS); the L2 strength is chosen on the validation images. Base classes only."""
    transform = base.eval_transform()
    train = torch.stack([transform(Image.fromarray(x)) for x in split.train_rgb])
    feats = image_features(base, train).cpu()
    index = {c: i for i, c in enumerate(split.base_classes)}
    y = torch.tensor([index[int(c)] for c in split.train_labels])

    def fit(wd: float) -> torch.nn.Linear:
        torch.manual_seed(0)
        head = torch.nn.Linear(feats.shape[1], len(index))
        opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=200,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(head(feats), y) + wd * head.weight.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return head

    def right(head, data) -> np.ndarray:
        pixels, labels = data
        with torch.no_grad():
            f = torch.cat([image_features(base, c) for c in pixels.split(1000)]).cpu()
            preds = np.asarray(split.base_classes)[head(f).argmax(-1).numpy()]
        return preds == labels

    heads = {wd: fit(wd) for wd in weight_decays}
    val = {wd: float(right(h, split.val).mean()) for wd, h in heads.items()}
    best = max(val, key=val.get)
    base_right = right(heads[best], split.test_base)
    return {"val": val[best], "val_new": None, "base": float(base_right.mean()), "new": None,
            "weight_decay": best, "correct": {"base": base_right, "new": None}}
