import json

import pytest

from bench.base2new import DATASETS, few_shot, main, read_dataset, subsample_classes
from clipfit_core.synthetic import COLOURS, render


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory):
    """Miniature datasets in CoOp's layout: a zhou-split one (oxford_pets) and FGVC."""
    import numpy as np

    root = tmp_path_factory.mktemp("coop")
    rng = np.random.default_rng(0)
    colours = list(COLOURS)[:5]
    pets = root / "oxford_pets"
    (pets / "images").mkdir(parents=True)
    split = {"train": [], "val": [], "test": []}
    for y, name in enumerate(colours):
        for i in range(8):
            file = f"{name}_{i}.png"
            render(COLOURS[name], 32, rng).save(pets / "images" / file)
            split["train" if i < 4 else "val" if i < 5 else "test"].append([file, y, name])
    (pets / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    air = root / "fgvc_aircraft"
    (air / "images").mkdir(parents=True)
    (air / "variants.txt").write_text("707-320\nA300B4\nCessna 172\n")
    for part in ("train", "val", "test"):
        lines = []
        for y, variant in enumerate(["707-320", "A300B4", "Cessna 172"]):
            name = f"{part}{y}"
            render(list(COLOURS.values())[y], 32, rng).save(air / "images" / f"{name}.jpg")
            lines.append(f"{name} {variant}")
        (air / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_reads_the_coop_layouts(coop_root):
    pets = read_dataset(coop_root, "oxford_pets")
    assert [len(pets[p]) for p in ("train", "val", "test")] == [20, 5, 15]
    assert pets["train"][0].path.endswith("oxford_pets/images/red_0.png")
    air = read_dataset(coop_root, "fgvc_aircraft")
    assert [i.classname for i in air["test"]] == ["707-320", "A300B4", "Cessna 172"]
    assert [i.label for i in air["train"]] == [0, 1, 2]
    assert DATASETS["food101"].epochs == 10 and DATASETS["dtd"].epochs == 100
    with pytest.raises(FileNotFoundError, match="DATASETS.md"):
        read_dataset(coop_root, "dtd")


def test_base_new_halves_and_few_shot(coop_root):
    items = read_dataset(coop_root, "oxford_pets")["test"]
    base_names, base = subsample_classes(items, "base")
    new_names, new = subsample_classes(items, "new")
    assert base_names == ["red", "green", "blue"] and new_names == ["yellow", "purple"]
    assert {i.label for i in base} == {0, 1, 2} and {i.label for i in new} == {0, 1}
    train = read_dataset(coop_root, "oxford_pets")["train"]
    picked = few_shot(train, 2, seed=1)
    assert len(picked) == 10 and picked == few_shot(train, 2, seed=1)
    assert few_shot(train, 2, seed=2) != picked


def test_harness_end_to_end_on_clipfit_tiny(coop_root, tmp_path, capsys):
    assert main(["--root", str(coop_root), "--model", "clipfit-tiny", "--datasets",
                 "oxford_pets,fgvc_aircraft", "--seeds", "1,2", "--shots", "4", "--epochs", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| oxford_pets |" in out and "| average |" in out
    report = json.loads((tmp_path / "base2new.json").read_text())
    pets = report["results"]["oxford_pets"]
    assert pets["classes"] == {"base": 3, "new": 2}
    assert [r["seed"] for r in pets["runs"]] == [1, 2]
    for r in pets["runs"]:
        assert 0 <= r["base"] <= 1 and 0 <= r["new"] <= 1
    avg = report["average"]["clipfit"]
    assert avg["hm"] == pytest.approx(2 * avg["base"] * avg["new"] / (avg["base"] + avg["new"]))
