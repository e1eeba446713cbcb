import pytest

from clipfit_core.data import (
    DatasetError,
    check_readable,
    load_dataset,
    sample_few_shot,
    split_train_val,
)
from clipfit_core.evaluate import accuracy, base_new_report, harmonic_mean, per_class_accuracy
from clipfit_core.synthetic import write_dataset


def test_folder_dataset(colour_train):
    data = load_dataset(colour_train)
    assert data.classnames == ["blue", "green", "red", "yellow"]
    assert data.counts() == dict.fromkeys(data.classnames, 16)
    (colour_train / "dark_red").mkdir(exist_ok=True)
    try:
        with pytest.raises(DatasetError, match="dark red"):
            load_dataset(colour_train)
    finally:
        (colour_train / "dark_red").rmdir()


def test_manifest_dataset(tmp_path):
    write_dataset(tmp_path / "imgs", ["red", "blue"], per_class=3)
    rows = ["path,label"] + [f"imgs/{c}/{i:04d}.png,{c}" for c in ("red", "blue")
                             for i in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(tmp_path / "m.csv")
    assert data.classnames == ["red", "blue"] and len(data) == 6
    check_readable(data)
    (tmp_path / "bad.csv").write_text("imgs/red/0000.png\n")
    with pytest.raises(DatasetError, match="line 1"):
        load_dataset(tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match="without images.*green"):
        load_dataset(tmp_path / "m.csv", classnames=["red", "blue", "green"])


def test_unreadable_files_are_all_named(tmp_path):
    write_dataset(tmp_path, ["red", "blue"], per_class=2)
    (tmp_path / "red" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "blue" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        check_readable(load_dataset(tmp_path))
    assert "2 unreadable" in str(e.value)
    assert "broken.png" in str(e.value) and "empty.jpg" in str(e.value)


def test_few_shot_sampling_and_split(colour_train):
    data = load_dataset(colour_train)
    a, b = sample_few_shot(data, 4, seed=1), sample_few_shot(data, 4, seed=1)
    assert a.samples == b.samples and a.counts() == dict.fromkeys(data.classnames, 4)
    assert sample_few_shot(data, 4, seed=2).samples != a.samples
    assert sample_few_shot(data, 100).counts() == data.counts()
    train, val = split_train_val(data, 0.25, seed=0)
    assert val.counts() == dict.fromkeys(data.classnames, 4)
    assert not {s.source for s in train.samples} & {s.source for s in val.samples}
    with pytest.raises(DatasetError):
        sample_few_shot(data, 0)


def test_metrics():
    assert accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    assert per_class_accuracy([0, 1, 1], [0, 1, 0], ["a", "b", "c"]) == \
        {"a": 0.5, "b": 1.0, "c": None}
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.48 / 1.4)
    assert harmonic_mean(0, 0) == 0
    assert base_new_report(0.8, 0.6)["hm"] == pytest.approx(0.6857142857)
