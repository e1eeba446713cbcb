import numpy as np
import pytest

from bench.domains import DOMAINS, blur, export, pixelate, sketch
from bench.protocol import SPLITS, Cell, make_cell_data
from clipfit_core.data import load_dataset
from clipfit_core.pretrain import ITEMS, load_fashion_mnist


@pytest.fixture(scope="module")
def items(fake_fmnist):
    return load_fashion_mnist("train", fake_fmnist)[0][:20]


def test_every_domain_gives_rgb_uint8_grey_images(items):
    for name, transform in DOMAINS.items():
        out = transform(items)
        assert out.shape == (20, 28, 28, 3) and out.dtype == np.uint8, name
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_sketch_is_light_strokes_on_black(items):
    out = sketch(items)[..., 0]
    padded = np.pad(items, ((0, 0), (1, 1), (1, 1)), mode="edge")
    flat = np.ones(items.shape, dtype=bool)  # the whole 3x3 neighbourhood has one value
    for dy in range(3):
        for dx in range(3):
            flat &= padded[:, dy:dy + 28, dx:dx + 28] == items
    assert (out[flat & (items == 0)] == 0).all()  # black away from the item
    assert (out[flat & (items > 0)] == 0).all()  # and inside it: only outlines remain
    assert (flat & (items > 0)).any()
    assert (out.max(axis=(1, 2)) > 200).all()  # every item leaves bright strokes


def test_blur_smooths_and_keeps_brightness(items):
    out = blur(items)[..., 0].astype(float)
    src = items.astype(float)
    def roughness(x):
        return np.square(np.diff(x, axis=2)).mean()  # gradient energy
    assert roughness(out) < 0.5 * roughness(src)
    assert abs(out.mean() - src.mean()) < 0.1 * src.mean()


def test_pixelate_makes_flat_blocks(items):
    p = pixelate(items)[..., 0]
    assert (p[:, ::4, ::4].repeat(4, 1).repeat(4, 2)[:, :28, :28] == p).all()  # 4x4 blocks


def test_export_writes_a_folder_dataset_clipfit_reads(fake_fmnist, tmp_path):
    export("sketch", tmp_path, split="test", per_class=3, data_root=str(fake_fmnist))
    data = load_dataset(tmp_path)
    assert sorted(data.classnames) == sorted(ITEMS)  # "ankle_boot" reads as "ankle boot"
    assert data.counts() == dict.fromkeys(data.classnames, 3)


def test_protocol_split_logic():
    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, 10, 3000), rng.integers(0, 10, 2500)
    assert set(SPLITS["a"][0]) == set(SPLITS["b"][1]) and set(SPLITS["a"][1]) == set(
        SPLITS["b"][0])
    assert not set(SPLITS["a"][0]) & set(SPLITS["a"][1])
    cell = Cell("blur", "a", 1)
    d = make_cell_data(cell, train_labels, test_labels, shots=16, val_per_class=50,
                       test_per_class=200)
    for c in cell.base_classes:
        assert (train_labels[d.train] == c).sum() == 16
        assert (train_labels[d.val] == c).sum() == 50
        assert (test_labels[d.test_base] == c).sum() == 200
    assert set(train_labels[d.train]) == set(cell.base_classes) == set(train_labels[d.val])
    assert set(test_labels[d.test_new]) == set(cell.new_classes)
    assert not set(d.train) & set(d.val)
    again = make_cell_data(cell, train_labels, test_labels)
    other_seed = make_cell_data(Cell("blur", "a", 2), train_labels, test_labels)
    swapped = make_cell_data(Cell("blur", "b", 1), train_labels, test_labels)
    assert (again.train == d.train).all() and (again.val == d.val).all()
    assert not np.array_equal(other_seed.train, d.train)
    assert not np.array_equal(other_seed.test_base, d.test_base)  # test set drawn per seed
    assert set(swapped.test_base) == set(d.test_new)  # one test draw for both splits
    assert set(train_labels[d.val_new]) == set(cell.new_classes) and len(d.val_new) == 250
    assert (again.val_new == d.val_new).all()
    with pytest.raises(ValueError, match="needed"):
        make_cell_data(cell, train_labels, test_labels, val_per_class=10_000)
