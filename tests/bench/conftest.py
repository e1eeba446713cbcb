import gzip

import numpy as np
import pytest


def write_fake_fashion_mnist(root, n_train=600, n_test=300, seed=0):
    """Fashion-MNIST's four idx files, filled with class-dependent random shapes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):  # a block whose place and size depend on the class
            top, height = 2 + y, 10 + (y % 5) * 2
            images[i, top:top + height, 4 + y:18 + y // 2] = rng.integers(120, 255)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())
    return root


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))
