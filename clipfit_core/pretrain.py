"""Pretrain ``clipfit-mini``: a small CLIP, from Fashion-MNIST, offline, in minutes on a CPU.

No pretrained CLIP can be downloaded here, so this builds one whose text encoder is
compositional enough for zero-shot prompts to mean something. Every training image is a
Fashion-MNIST item tinted with a random colour on a random background texture (plain,
striped, dotted, checkered); its caption names the item and often its colour and background
("a photo of a red sneaker on a striped background"). In the contrastive loss every caption
whose named attributes all match an image is a positive for it (and vice versa).

    clipfit pretrain-mini [--epochs 8] [--seed 0]       # writes WEIGHTS_DIR/clipfit-mini/
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .classify import encode_text
from .models import LOCAL_CHECKPOINT_NAME, RANDOM_INIT_SEED

ARCH = "clipfit-mini"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
ITEMS = ["t-shirt", "trouser", "pullover", "dress", "coat",
         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
COLOURS = {
    "red": (0.86, 0.16, 0.16), "green": (0.16, 0.72, 0.24), "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15), "purple": (0.6, 0.2, 0.78), "orange": (0.95, 0.55, 0.1),
    "pink": (0.95, 0.55, 0.75), "white": (0.97, 0.97, 0.97),
}
BACKGROUNDS = ["plain", "striped", "dotted", "checkered"]
TEMPLATES = [  # (template, names colour, names background)
    ("a photo of a {item}.", False, False),
    ("a {item}.", False, False),
    ("a photo of a {colour} {item}.", True, False),
    ("a {colour} {item}.", True, False),
    ("a photo of a {item} on a {background} background.", False, True),
    ("a {item} on a {background} background.", False, True),
    ("a photo of a {colour} {item} on a {background} background.", True, True),
    ("a {colour} {item} on a {background} background.", True, True),
]
IMAGE_SIZE = 28


class FashionMnistMissing(FileNotFoundError):
    pass


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_DIR):
    """(images uint8 [N, 28, 28], labels int64 [N]) from the idx files of Fashion-MNIST."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    paths = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FashionMnistMissing(
            f"Fashion-MNIST not found ({', '.join(missing)}); install it with "
            f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass the folder "
            f"holding the four *-ubyte.gz files")
    with gzip.open(paths[0]) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(paths[1]) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def texture_masks(size: int = IMAGE_SIZE) -> torch.Tensor:
    """One 0/1 pattern per background kind, shape (len(BACKGROUNDS), size, size)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([
        torch.zeros(size, size),                                  # plain
        ((yy // 3) % 2 == 0).float(),                             # striped
        (((yy % 5) - 2) ** 2 + ((xx % 5) - 2) ** 2 <= 1).float(),  # dotted
        (((yy // 4) + (xx // 4)) % 2 == 0).float(),               # checkered
    ])


def render(items: torch.Tensor, colours: torch.Tensor, backgrounds: torch.Tensor,
           generator: torch.Generator) -> torch.Tensor:
    """Composite items over textured backgrounds: float (B, 3, 28, 28) in [0, 1].

    items: uint8 (B, 28, 28) grey items; colours / backgrounds: attribute indices (B,).
    The background's two tones are random dark greys, so the item colour stays the one named.
    """
    b = items.shape[0]
    alpha = (items.float() / 255.0).unsqueeze(1)                       # (B, 1, H, W)
    palette = torch.tensor(list(COLOURS.values()))                     # (C, 3)
    tint = palette[colours].view(b, 3, 1, 1)
    pattern = texture_masks(items.shape[-1])[backgrounds].unsqueeze(1)  # (B, 1, H, W)
    tones = torch.rand(b, 2, 1, 1, 1, generator=generator) * 0.35      # dark greys
    tones[:, 1] = (tones[:, 0] + 0.12 + 0.15 * torch.rand(b, 1, 1, 1, generator=generator)) \
        .clamp(max=0.5)
    background = tones[:, 0] + (tones[:, 1] - tones[:, 0]) * pattern
    return (alpha * tint + (1 - alpha) * background).clamp(0, 1)


@dataclass(frozen=True)
class Caption:
    text: str
    template: int
    item: int
    colour: int | None  # None: the caption does not name it
    background: int | None


def all_captions() -> list[Caption]:
    """Every caption the templates can produce, in a fixed order."""
    colour_names = list(COLOURS)
    out = []
    for item, item_name in enumerate(ITEMS):
        for t, (template, names_colour, names_bg) in enumerate(TEMPLATES):
            for colour in (range(len(COLOURS)) if names_colour else [None]):
                for bg in (range(len(BACKGROUNDS)) if names_bg else [None]):
                    text = template.format(
                        item=item_name,
                        colour=colour_names[colour] if colour is not None else "",
                        background=BACKGROUNDS[bg] if bg is not None else "")
                    out.append(Caption(text, t, item, colour, bg))
    return out


class CaptionTable:
    """All captions tokenized once, with their attributes, and random choice per image."""

    def __init__(self, tokenizer):
        self.captions = all_captions()
        self.tokens = tokenizer([c.text for c in self.captions])
        self.item = torch.tensor([c.item for c in self.captions])
        # -1: the caption does not name this attribute, so any value matches
        self.colour = torch.tensor([-1 if c.colour is None else c.colour for c in self.captions])
        self.bg = torch.tensor([-1 if c.background is None else c.background
                                for c in self.captions])
        self._index = {(c.item, c.template, c.colour, c.background): i
                       for i, c in enumerate(self.captions)}

    def sample(self, items, colours, backgrounds, generator) -> torch.Tensor:
        """One random caption index per image, true to that image's attributes."""
        templates = torch.randint(len(TEMPLATES), (len(items),), generator=generator)
        out = []
        for item, colour, bg, t in zip(items.tolist(), colours.tolist(), backgrounds.tolist(),
                                       templates.tolist()):
            _, names_colour, names_bg = TEMPLATES[t]
            out.append(self._index[(item, t, colour if names_colour else None,
                                    bg if names_bg else None)])
        return torch.tensor(out)

    def positives(self, items, colours, backgrounds, caption_ids) -> torch.Tensor:
        """(B_images, B_captions) bool: caption j names only attributes image i has."""
        ci, cc, cb = self.item[caption_ids], self.colour[caption_ids], self.bg[caption_ids]
        return ((items[:, None] == ci[None]) & ((cc[None] < 0) | (colours[:, None] == cc[None]))
                & ((cb[None] < 0) | (backgrounds[:, None] == cb[None])))


def multi_positive_contrastive(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where each row's probability mass on all its positives counts."""
    def one_way(lg, pos):
        log_p = lg.log_softmax(dim=-1)
        return -torch.logsumexp(log_p.masked_fill(~pos, float("-inf")), dim=-1).mean()
    return 0.5 * (one_way(logits, positives) + one_way(logits.T, positives.T))


@dataclass
class PretrainConfig:
    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    limit: int | None = None  # use only the first N training images (tests)


def pretrain_mini(
    out_dir: str | Path,
    config: PretrainConfig | None = None,
    *,
    data_root: str | Path = FASHION_MNIST_DIR,
    on_step: Callable[[int, int, float], None] | None = None,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Pretrain clipfit-mini and write ``out_dir/open_clip_model.safetensors`` (+ a JSON
    record of how it was made). Deterministic for a seed on a given machine."""
    config = config or PretrainConfig()
    images, labels = data if data is not None else load_fashion_mnist("train", data_root)
    if config.limit:
        images, labels = images[:config.limit], labels[:config.limit]
    images, labels = torch.from_numpy(images.copy()), torch.from_numpy(labels)
    torch.manual_seed(RANDOM_INIT_SEED)
    model = open_clip.create_model(ARCH)
    model.train()
    table = CaptionTable(open_clip.get_tokenizer(ARCH))
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(images) // config.batch_size
    total = steps_per_epoch * config.epochs
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, fused=True)
    start, step, loss_value = time.perf_counter(), 0, float("nan")
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size:(s + 1) * config.batch_size]
            items = labels[idx]
            colours = torch.randint(len(COLOURS), (len(idx),), generator=gen)
            backgrounds = torch.randint(len(BACKGROUNDS), (len(idx),), generator=gen)
            pixels = render(images[idx], colours, backgrounds, gen)
            caption_ids = table.sample(items, colours, backgrounds, gen)
            lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) * \
                0.5 * (1 + math.cos(math.pi * step / total))
            for group in optimizer.param_groups:
                group["lr"] = lr

            img = F.normalize(model.encode_image(normalize(pixels)), dim=-1)
            txt = F.normalize(encode_text(model, table.tokens[caption_ids]), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            loss = multi_positive_contrastive(
                logits, table.positives(items, colours, backgrounds, caption_ids))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            loss_value = loss.item()
            if on_step is not None:
                on_step(step, total, loss_value)
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    record = {"arch": ARCH, "config": asdict(config), "steps": step, "final_loss": loss_value,
              "seconds": round(seconds, 1), "images": len(images)}
    if data is None:
        record["zero_shot_test_accuracy"] = zero_shot_test_accuracy(model, data_root, config.seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              out_dir / LOCAL_CHECKPOINT_NAME)
    (out_dir / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's mean/std normalization of (B, 3, H, W) pixels in [0, 1]."""
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def zero_shot_test_accuracy(model, data_root=FASHION_MNIST_DIR, seed: int = 0,
                            template: str = "a photo of a {}.") -> float:
    """10-way zero-shot accuracy on the 10,000 untouched test images, rendered like the
    training images (random colour and background, fixed seed)."""
    images, labels = load_fashion_mnist("test", data_root)
    images, labels = torch.from_numpy(images.copy()), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed + 1)
    colours = torch.randint(len(COLOURS), (len(images),), generator=gen)
    backgrounds = torch.randint(len(BACKGROUNDS), (len(images),), generator=gen)
    tokens = open_clip.get_tokenizer(ARCH)([template.format(c) for c in ITEMS])
    text = F.normalize(encode_text(model, tokens), dim=-1)
    correct = 0
    for i in range(0, len(images), 1000):
        pixels = normalize(render(images[i:i + 1000], colours[i:i + 1000],
                                  backgrounds[i:i + 1000], gen))
        img = F.normalize(model.encode_image(pixels), dim=-1)
        correct += ((img @ text.T).argmax(-1) == labels[i:i + 1000]).sum().item()
    return correct / len(images)


# CLIP's normalization, which the base-model code applies to clipfit-mini too.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
