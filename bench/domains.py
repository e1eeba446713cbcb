"""Downstream "datasets" for the replication study: Fashion-MNIST in domains never seen in
pretraining (clipfit-mini only ever saw tinted items on dark textured backgrounds).

Each domain maps grey items (uint8, N x 28 x 28) to RGB images (uint8, N x 28 x 28 x 3).
Their strengths were set so that clipfit-mini's 10-way zero-shot accuracy on *training*
images lies between 35% and 75% (see ``python -m bench.domains calibrate``).

    python -m bench.domains export sketch OUT_DIR --split test --per-class 100
        writes OUT_DIR/<class>/<i>.png, a folder `clipfit train` / `clipfit eval` read.
    python -m bench.domains calibrate          # zero-shot accuracy per domain (train images)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipfit_core.pretrain import ITEMS, load_fashion_mnist


def _as_float(items: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(items, dtype=np.float32) / 255.0).unsqueeze(1)


def _to_rgb(grey: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> uint8 (N, H, W, 3)."""
    grey = (grey.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def blur(items: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """A heavy Gaussian blur (sigma 2 px of 28): white item on black, detail gone."""
    x = _as_float(items)
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return _to_rgb(x)


def sketch(items: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Edge map: light strokes (Sobel magnitude) on black; the item's fill and shading gone."""
    x = _as_float(items)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = (gx ** 2 + gy ** 2).sqrt()
    mag = mag / mag.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    return _to_rgb((mag > threshold).float() * mag)


def pixelate(items: np.ndarray, block: int = 4) -> np.ndarray:
    """Mosaic: 4x4 block averages, shown as flat squares (a 7x7 image)."""
    x = _as_float(items)
    small = F.avg_pool2d(x, block, ceil_mode=True)
    return _to_rgb(F.interpolate(small, scale_factor=block, mode="nearest")[..., :28, :28])


def rotate(items: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    """Every item turned ``degrees`` anticlockwise about the centre (bilinear): a pose
    clipfit-mini never saw upright items in."""
    from torchvision.transforms import functional as TF

    turned = TF.rotate(_as_float(items), degrees,
                       interpolation=TF.InterpolationMode.BILINEAR)
    return _to_rgb(turned)


def noise(items: np.ndarray, sigma: float = 0.3, seed: int = 0) -> np.ndarray:
    """Heavy Gaussian pixel noise (``sigma`` of the 0-1 range), fixed per image by its
    content so the same item always gets the same noise."""
    x = _as_float(items)
    out = torch.empty_like(x)
    for i, item in enumerate(items):
        g = torch.Generator().manual_seed(seed + int(np.asarray(item, np.int64).sum()))
        out[i] = x[i] + sigma * torch.randn(x[i].shape, generator=g)
    return _to_rgb(out)


def occlude(items: np.ndarray, band: int = 10) -> np.ndarray:
    """A black band ``band`` pixels high across the middle hides the item's centre."""
    x = _as_float(items).clone()
    top = (28 - band) // 2
    x[..., top:top + band, :] = 0
    return _to_rgb(x)


def shrink(items: np.ndarray, size: int = 20) -> np.ndarray:
    """The item scaled down to ``size`` pixels, centred on black: a small thing far away."""
    small = F.interpolate(_as_float(items), size=size, mode="area")
    pad = 28 - size
    return _to_rgb(F.pad(small, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)))


# The study's domains: every choice of the replication (learning rates, crop scales, the
# default recipe) is made on their validation images.
STUDY_DOMAINS = {"sketch": sketch, "blur": blur, "pixelate": pixelate}
# Candidates for held-out domains, in the order the protocol tries them: the first two whose
# calibrated zero-shot accuracy lies in 35-75% are held out; no choice is made on them.
HELD_OUT_CANDIDATES = {"rotate": rotate, "noise": noise, "occlude": occlude, "shrink": shrink}
DOMAINS: dict[str, Callable[[np.ndarray], np.ndarray]] = {**STUDY_DOMAINS,
                                                          **HELD_OUT_CANDIDATES}
# Measured with `calibrate` (clipfit-mini, 6 epochs, last 5,000 training images): white items on
# black 87.5%; sketch 37.8%, blur 68.8%, pixelate 65.0%. Rejected: dark lines or shapes on white
# (15-16%, near chance), white silhouettes (81.6%), a plain negative (14.9%).
# Held-out candidates, strengths set by the same rule on the same images (zero-shot only, no
# training): rotate 20 degrees 48.9% (90 degrees: 7.7%, 30: 29.2%), noise sigma 0.3 49.3% (0.5:
# 27.5%), occlude band 10 53.2%, shrink to 20 px 46.6% (12 px: 9.7%, 18: 34.5%).


def classname_folder(name: str) -> str:
    return name.replace(" ", "_")


def export(domain: str, out: str | Path, split: str = "test", per_class: int = 100,
           seed: int = 0, data_root: str | None = None) -> Path:
    """Write ``per_class`` images of each class in ``domain`` as OUT/<class>/<i>.png."""
    from PIL import Image

    if domain not in DOMAINS:
        raise SystemExit(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    images, labels = load_fashion_mnist(split, *( [data_root] if data_root else []))
    rng = np.random.default_rng(seed)
    out = Path(out)
    for label, name in enumerate(ITEMS):
        idx = rng.permutation(np.flatnonzero(labels == label))[:per_class]
        folder = out / classname_folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        for i, rgb in zip(idx, DOMAINS[domain](images[idx])):
            Image.fromarray(rgb).save(folder / f"{i:05d}.png")
    return out


@torch.no_grad()
def zero_shot_accuracy(base, rgb: np.ndarray, labels: np.ndarray,
                       template: str = "a photo of a {}.") -> float:
    from clipfit_core.classify import class_text_features, image_features

    pixels = to_model_input(base, rgb)
    text = class_text_features(base, ITEMS, [template])
    preds = torch.cat([(image_features(base, chunk) @ text.T).argmax(-1)
                       for chunk in pixels.split(1000)])
    return (preds == torch.from_numpy(labels)).float().mean().item()


def to_model_input(base, rgb: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) at the model's size -> normalized float (N, 3, H, W)."""
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != base.image_size:
        x = F.interpolate(x, size=base.image_size, mode="bicubic", align_corners=False)
    mean = torch.tensor(base.mean).view(1, 3, 1, 1)
    std = torch.tensor(base.std).view(1, 3, 1, 1)
    return (x - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.domains",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a domain's images as a class-folder dataset")
    p.add_argument("domain", choices=list(DOMAINS))
    p.add_argument("out")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("calibrate", help="clipfit-mini zero-shot accuracy per domain")
    p.add_argument("--images", type=int, default=5000, help="training images to use")
    p.add_argument("--cache-dir", default=None,
                   help="weights directory (default: Settings().weights_dir: "
                        "CLIPFIT_WEIGHTS_DIR or .env, else ~/.cache/clipfit/weights)")
    args = parser.parse_args()
    if args.command == "export":
        print(export(args.domain, args.out, args.split, args.per_class, args.seed))
        return
    from clipfit_core.models import create_base_model
    from registry.settings import Settings

    base = create_base_model("clipfit-mini", cache_dir=args.cache_dir or Settings().weights_dir)
    images, labels = load_fashion_mnist("train")
    images, labels = images[-args.images:], labels[-args.images:]
    plain = np.repeat(images[..., None], 3, axis=-1)
    report = {"white on black (no domain)": zero_shot_accuracy(base, plain, labels)}
    for name, transform in DOMAINS.items():
        report[name] = zero_shot_accuracy(base, transform(images), labels)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
