"""Prompt templates, class text features (cached), batched top-k prediction, and which
temperature and rejection threshold apply to a request."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from cachetools import LRUCache
from PIL import Image

from .data import open_image
from .models import BaseModel
from .prompts import resolve_templates


def encode_text(
    model: torch.nn.Module, tokens: torch.Tensor, token_embeddings: torch.Tensor | None = None
) -> torch.Tensor:
    """``model.encode_text`` (unnormalized), computing only the positions that matter.

    With CLIP's causal mask and end-of-text pooling, the output at the EOT token depends only
    on the tokens before it, so the padding after the longest prompt is cut off. Prompts are
    short (about 10 of 77 positions), which makes the text tower several times cheaper.

    ``token_embeddings`` (same shape as ``model.token_embedding(tokens)``) replaces the
    embedding lookup, for prompt learning (CoOp) baselines; ``tokens`` still locate the EOT.
    """
    plain = getattr(model, "text_pool_type", None) == "argmax" and \
        getattr(model, "attn_mask", None) is not None and hasattr(model, "token_embedding")
    if not plain:
        if token_embeddings is not None:
            raise ValueError("token_embeddings need a CLIP with an open_clip text transformer")
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    eot = tokens.argmax(dim=-1)
    cast_dtype = model.transformer.get_cast_dtype()
    if token_embeddings is None:
        x = model.token_embedding(tokens[:, :length]).to(cast_dtype)
    else:
        x = token_embeddings[:, :length].to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def tokenize_prompts(base: BaseModel, classnames: Sequence[str], templates: Sequence[str]):
    """Tokens of every (class, template) prompt, class-major: shape (C * T, context)."""
    prompts = [t.format(c) for c in classnames for t in templates]
    return base.tokenizer(prompts).to(base.device)


def class_features_from_tokens(
    model: torch.nn.Module, tokens: torch.Tensor, n_templates: int
) -> torch.Tensor:
    """Normalized per-class text features, averaged over templates: shape (C, D)."""
    feats = F.normalize(encode_text(model, tokens), dim=-1)
    if n_templates > 1:
        feats = F.normalize(feats.view(-1, n_templates, feats.shape[-1]).mean(dim=1), dim=-1)
    return feats


@torch.no_grad()
def class_text_features(
    base: BaseModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Normalized (C, D) text features of the current model weights, float32."""
    n_t = len(templates)
    per_batch = max(1, batch_size // n_t)
    chunks = []
    for i in range(0, len(classnames), per_batch):
        tokens = tokenize_prompts(base, classnames[i:i + per_batch], templates)
        chunks.append(class_features_from_tokens(base.model, tokens, n_t).float())
    return torch.cat(chunks)


@torch.no_grad()
def image_features(base: BaseModel, pixels: torch.Tensor) -> torch.Tensor:
    """Normalized image features for a batch of preprocessed images, float32."""
    pixels = pixels.to(base.device, non_blocking=True)
    return F.normalize(base.model.encode_image(pixels).float(), dim=-1)


def load_images(images: Sequence[Image.Image | bytes | str | Path]) -> list[Image.Image]:
    return [open_image(im) for im in images]


UNKNOWN = "unknown"  # the label of a rejected image


@dataclass
class Prediction:
    labels: list[str]
    probs: list[float]
    unknown: bool = False  # the top probability was below a rejection threshold

    def to_dict(self) -> dict:
        return {"label": UNKNOWN if self.unknown else self.labels[0], "unknown": self.unknown,
                "top_k": [{"label": label, "prob": round(p, 6)}
                          for label, p in zip(self.labels, self.probs)]}


def predict(logits: torch.Tensor, classnames: Sequence[str], *, temperature: float = 1.0,
            threshold: float | None = None, top_k: int = 5) -> list[Prediction]:
    """Top-k labels and probabilities per row of ``(N, C)`` logits.

    Probabilities are ``softmax(logits / temperature)``. A row whose top probability is
    below ``threshold`` is answered ``"unknown"`` (its top-k kept): the comparison is on the
    unrounded probability, so a probability equal to the threshold is kept; ``to_dict``
    rounds to 6 digits only for the answer.

    Args:
        logits: ``(N, C)`` logits, columns in ``classnames`` order.
        classnames: the C class names.
        temperature: divides the logits (1: none; see :func:`calibration_for`).
        threshold: the rejection threshold on the top probability, or None for none.
        top_k: labels per row, at most C.
    """
    probs = (logits if temperature == 1.0 else logits / temperature).softmax(dim=-1)
    values, indices = probs.topk(min(top_k, len(classnames)), dim=-1)
    return [Prediction([classnames[j] for j in idx.tolist()], val.tolist(),
                       unknown=threshold is not None and val[0].item() < threshold)
            for val, idx in zip(values, indices)]


def calibration_for(config: dict | None, *, own_classes: bool, calibrated: bool = True,
                    reject_unknown: bool = False, threshold: float | None = None
                    ) -> tuple[float, float | None, list[str]]:
    """The temperature and rejection threshold that apply to one classification request.

    An adapter's temperature and threshold were fitted on its held-out split for its own
    classes and templates, so they apply to those only: the temperature when
    ``calibrated``; its threshold when ``reject_unknown`` and no ``threshold`` is given
    (which needs its calibrated probabilities). A given ``threshold`` always applies.

    Args:
        config: the adapter's delta config (``calibration`` is read), None for zero-shot.
        own_classes: the request uses the adapter's own classes and templates.
        calibrated: use the adapter's fitted temperature.
        reject_unknown: answer "unknown" below the adapter's fitted threshold.
        threshold: an explicit threshold (it wins over the adapter's).

    Returns:
        ``(temperature, threshold, problems)``; ``problems`` says why the request cannot be
        answered as asked (empty when it can).
    """
    fitted = (config.get("calibration") or {}) if config is not None else {}
    own_classes = config is not None and own_classes
    problems: list[str] = []
    temperature = 1.0
    if calibrated and own_classes and fitted.get("temperature"):
        temperature = float(fitted["temperature"])
    if reject_unknown and threshold is None:
        if config is None:
            problems.append("reject_unknown uses an adapter's threshold; for zero-shot give "
                            "a threshold")
        elif not own_classes:
            problems.append("reject_unknown uses the threshold fitted for the adapter's own "
                            "classes and templates; with others give a threshold")
        elif fitted.get("threshold") is None:
            problems.append("this adapter has no rejection threshold (it kept no held-out "
                            "images, or was trained before thresholds); give a threshold")
        elif not calibrated:
            problems.append("the adapter's threshold is on calibrated probabilities: leave "
                            "calibrated on, or give a threshold")
        else:
            threshold = float(fitted["threshold"])
    return temperature, threshold, problems


def logits_for(base: BaseModel, img_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """CLIP logits: exp(logit_scale) * cosine similarity."""
    scale = base.model.logit_scale.detach().float().exp().to(img_feats.device)
    return scale * img_feats @ text_feats.to(img_feats.device).T


class TextFeatureCache:
    """LRU of class text features keyed by (delta id, classes, templates); thread-safe,
    counting hits and misses."""

    def __init__(self, maxsize: int = 256):
        self.hits = 0
        self.misses = 0
        self._items: LRUCache[tuple, torch.Tensor] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value

    def __len__(self) -> int:
        return len(self._items)


class Classifier:
    """Zero-shot or delta-tuned classification from one shared base model.

    A delta is swapped into the base for the duration of a call (46k numbers: microseconds),
    under a lock, so one model in memory serves any number of deltas.
    """

    def __init__(self, base: BaseModel, *, cache_size: int = 256, batch_size: int = 64):
        self.base = base
        self.batch_size = batch_size
        self.text_cache = TextFeatureCache(cache_size)
        self._lock = threading.RLock()

    def text_features(self, classnames, templates, delta=None) -> torch.Tensor:
        from .delta import applied

        key = (delta.id if delta is not None else "", tuple(classnames), tuple(templates))
        feats = self.text_cache.get(key)
        if feats is None:
            with self._lock, applied(self.base, delta):
                feats = class_text_features(self.base, list(classnames), list(templates))
            self.text_cache.put(key, feats)
        return feats

    def logits(self, images, classnames, templates, delta=None) -> torch.Tensor:
        """(N, C) logits for images (PIL, bytes or paths), in batches of ``batch_size``."""
        from .delta import applied

        text = self.text_features(classnames, templates, delta)
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = load_images(images[i:i + self.batch_size])
            pixels = self.base.preprocess(batch)
            with self._lock, applied(self.base, delta):
                feats = image_features(self.base, pixels)
            out.append(logits_for(self.base, feats, text).cpu())
        return torch.cat(out) if out else torch.empty(0, len(classnames))

    def classify(
        self, images, classnames: Sequence[str], templates: Sequence[str] | str | None = None,
        *, delta=None, top_k: int = 5, temperature: float = 1.0,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Top-k labels and probabilities per image (:func:`predict`: ``temperature`` and
        ``threshold`` as :func:`calibration_for` chooses them)."""
        if not classnames:
            raise ValueError("no class names to classify among")
        templates = resolve_templates(templates)
        return predict(self.logits(images, classnames, templates, delta), classnames,
                       temperature=temperature, threshold=threshold, top_k=top_k)
