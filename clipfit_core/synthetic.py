"""A small, learnable synthetic image set: for tests, demos and smoke benchmarks.

Each class is a colour; every image is that colour's noisy blob on a random grey background
at a random place and size, so a model must look at the image to tell classes apart.

    python -m clipfit_core.synthetic OUT_DIR [--per-class N] [--size PX] [--seed S]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220),
    "yellow": (230, 210, 40), "purple": (150, 50, 190), "orange": (240, 140, 30),
    "cyan": (40, 200, 210), "pink": (240, 130, 190),
}


def render(colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a noisy disc of ``colour`` on a random grey, noisy background."""
    grey = rng.integers(60, 200)
    img = np.full((size, size, 3), grey, dtype=np.float32)
    radius = rng.uniform(0.25, 0.45) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    img[disc] = np.asarray(colour, dtype=np.float32) * rng.uniform(0.8, 1.1)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_dataset(out: str | Path, classes: list[str] | None = None, per_class: int = 16,
                  size: int = 64, seed: int = 0) -> Path:
    """Write ``out/<class>/<i>.png`` for each class; returns ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for name in classes or list(COLOURS)[:4]:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            render(COLOURS[name], size, rng).save(folder / f"{i:04d}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--classes", default="red,green,blue,yellow",
                        help=f"comma-separated, from {', '.join(COLOURS)}")
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = write_dataset(args.out, args.classes.split(","), args.per_class, args.size, args.seed)
    print(path)


if __name__ == "__main__":
    main()
