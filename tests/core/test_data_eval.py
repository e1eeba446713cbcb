import pytest

from clipfit_core.data import (
    DatasetError,
    check_readable,
    load_dataset,
    sample_few_shot,
    split_train_val,
)
from clipfit_core.evaluate import accuracy, harmonic_mean, per_class_accuracy
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
    assert data.classnames == ["blue", "red"] and len(data) == 6  # sorted, as folders
    assert load_dataset(tmp_path / "m.csv", ["red", "blue"]).classnames == ["red", "blue"]
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


def _zip(root, prefix="", manifest=None) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(root.rglob("*.png")):
            z.write(path, prefix + path.relative_to(root).as_posix())
        if manifest is not None:
            z.writestr(prefix + "manifest.csv", manifest)
    return buf.getvalue()


def _content(dataset):
    """(classes, [(label, name, image bytes)]) whatever the sources are."""
    from pathlib import Path

    def raw(source):
        return Path(source).read_bytes() if isinstance(source, str) else source

    return dataset.classnames, [(s.label, s.name, raw(s.source)) for s in dataset.samples]


def test_one_reader_for_folder_zip_and_labelled_uploads(colour_train, tmp_path):
    import io
    import random
    import zipfile

    from clipfit_core.data import from_labelled, read_zip

    folder = load_dataset(colour_train)
    (tmp_path / "set.zip").write_bytes(_zip(colour_train))
    zipped = load_dataset(tmp_path / "set.zip")
    nested = read_zip(zipfile.ZipFile(io.BytesIO(_zip(colour_train, prefix="colours/"))))
    rows = [(f"{p.parent.name}/{p.name}", p.read_bytes(), p.parent.name)
            for p in colour_train.rglob("*.png")]
    random.Random(0).shuffle(rows)  # arrival order does not matter
    uploaded = from_labelled(rows)
    assert _content(folder) == _content(zipped) == _content(nested) == _content(uploaded)
    assert isinstance(zipped.samples[0].source, bytes)


def test_manifest_in_a_zip_reads_each_member_once(colour_train):
    import io
    import zipfile

    from clipfit_core.data import read_zip

    rows = "path,label\n" + "".join(f"red/{i:04d}.png,red\n" for i in range(3)) + \
        "red/0000.png,blue\n" * 50 + "blue/0000.png,blue\n"
    data = read_zip(zipfile.ZipFile(io.BytesIO(_zip(colour_train, "x/", manifest=rows))))
    assert data.classnames == ["blue", "red"] and data.counts() == {"blue": 51, "red": 3}
    copies = {id(s.source) for s in data.samples if s.name == "red/0000.png"}
    assert len(copies) == 1  # one member named 51 times: one copy in memory
    with pytest.raises(DatasetError, match="'red/missing.png' is not in the archive"):
        read_zip(zipfile.ZipFile(io.BytesIO(_zip(colour_train, manifest="red/missing.png,red\n"))))


def test_problems_are_collected_not_first_only(colour_train):
    from clipfit_core.data import from_labelled

    with pytest.raises(DatasetError) as e:
        from_labelled([("a.png", b"x", "red"), ("b.png", b"y", "blue")],
                      ["red", "green", "red"])
    assert e.value.problems == ["duplicate class names: 'red'",
                                "labels not among the classes: 'blue'",
                                "classes without images: 'green'"]


def _zip_of(entries: dict[str, bytes]):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return zipfile.ZipFile(io.BytesIO(buf.getvalue()))


def test_zip_layouts_read_by_the_folder_rules():
    from clipfit_core.data import read_zip

    png = b"\x89PNG-not-decoded-here"
    # a zipped folder holding a manifest beside flat images
    data = read_zip(_zip_of({"set/manifest.csv": b"a.png,cat\nb.png,dog\n", "set/a.png": png,
                             "set/b.png": png + b"2"}))
    assert data.classnames == ["cat", "dog"] and [s.name for s in data.samples] == \
        ["a.png", "b.png"]
    # a zipped folder with a README beside its class folders; 'a_b' and 'a b' are one class
    data = read_zip(_zip_of({"set/README.txt": b"hi", "set/a_b/1.png": png,
                             "set/a b/2.png": png + b"2", "set/dog/x/3.png": png}))
    assert data.counts() == {"a b": 2, "dog": 1}
    with pytest.raises(DatasetError, match=r"images outside any class folder.*stray.png"):
        read_zip(_zip_of({"stray.png": png, "cat/1.png": png, "dog/1.png": png}))


def test_unreadable_archives_are_dataset_errors(tmp_path):
    import io
    import zipfile

    from clipfit_core.data import read_zip

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.csv", "a.png,cat\n")
        z.writestr("a.png", b"x")
    raw = bytearray(buf.getvalue())
    raw[raw.index(b"a.png,cat")] ^= 1  # the manifest's stored bytes no longer match its CRC
    with pytest.raises(DatasetError, match="'manifest.csv': cannot be read from the archive"):
        read_zip(zipfile.ZipFile(io.BytesIO(bytes(raw))))
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(DatasetError, match="is not a zip archive"):
        load_dataset(tmp_path / "junk.zip")


def test_same_named_uploads_are_ordered_by_content():
    from clipfit_core.data import from_labelled

    rows = [("image.png", bytes([i]) * 10, "cat") for i in range(5)] + \
        [("image.png", b"d", "dog")]
    a = from_labelled(rows)
    b = from_labelled(list(reversed(rows)))
    assert [s.source for s in a.samples] == [s.source for s in b.samples]


def test_a_zip_is_bounded_from_its_directory_and_while_members_inflate():
    import io
    import zipfile

    from clipfit_core.data import read_zip

    def broken(entries: dict[str, bytes], keep: str = ""):
        """Every member but ``keep`` fails its CRC: reading one would say so."""
        archive = _zip_of(entries)
        for info in archive.infolist():
            if info.filename != keep:
                info.CRC ^= 1
        return archive

    # classes and images are counted from the directory, before any member is read
    many = broken({f"c{i}/1.png": b"x" for i in range(2000)})
    with pytest.raises(DatasetError, match="^2000 classes, the limit is 1000$"):
        read_zip(many, max_classes=1000)
    with pytest.raises(DatasetError, match="^2000 images, the limit is 100$"):
        read_zip(many, max_images=100)
    rows = "".join(f"{i}.png,c{i}\n" for i in range(20)).encode()
    listed = broken({"manifest.csv": rows} | {f"{i}.png": b"x" for i in range(20)},
                    keep="manifest.csv")
    with pytest.raises(DatasetError, match="^20 classes, the limit is 10$"):
        read_zip(listed, max_classes=10)
    # members declaring more than the limit: all named, none inflated
    big = _zip_of({"cat/a.png": bytes(5000), "dog/b.png": bytes(6000), "dog/c.png": b"x",
                   "notes.txt": bytes(9000)})
    with pytest.raises(DatasetError) as e:
        read_zip(big, max_image_bytes=1000)
    assert e.value.problems == ["'cat/a.png': 5000 bytes uncompressed, the limit is 1000",
                                "'dog/b.png': 6000 bytes uncompressed, the limit is 1000"]
    # a member inflating past what its directory entry declares, or past the limit
    for declared, words in [
        (10, r"'cat/bomb.png': cannot be read from the archive \(inflates past the 10 bytes"),
        (1000, r"'cat/bomb.png': more than 1000 bytes uncompressed, the limit is 1000"),
        (10, r"'manifest.csv': cannot be read from the archive \(inflates past"),
    ]:
        name = "manifest.csv" if "manifest" in words else "cat/bomb.png"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name, bytes(1 << 20))
            z.writestr("dog/1.png", b"x")
        bomb = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
        bomb.getinfo(name).file_size = declared
        with pytest.raises(DatasetError, match=words):
            read_zip(bomb, max_image_bytes=1000)
