import json
import os
import pickle
import shutil
import statistics
import sys
import types

import pytest
import torch

import bench.base2new as b2n
from bench.base2new import (
    DATASETS,
    SplitFileError,
    few_shot,
    main,
    read_dataset,
    read_split_fewshot,
    subsample_classes,
    training_shots,
)
from clipfit_core.evaluate import harmonic_mean
from clipfit_core.synthetic import COLOURS, render

DASSL_MODULE = "dassl.data.datasets.base_dataset"
AUTHOR_ROOT = "/home/author/CoOp/data"  # CoOp pickles hold absolute paths of their writer


class DasslDatum:
    """Dassl's Datum as CoOp pickles it: private attributes behind properties."""

    def __init__(self, impath, label, classname, domain=-1):
        self._impath, self._label, self._domain, self._classname = impath, label, domain, classname


DasslDatum.__module__, DasslDatum.__qualname__ = DASSL_MODULE, "Datum"


def write_split_fewshot(path, train, val=()):
    """Pickle {"train", "val"} as CoOp does, with Dassl's Datum importable under its name."""
    parts = DASSL_MODULE.split(".")
    with pytest.MonkeyPatch.context() as mp:
        for k in range(1, len(parts) + 1):
            mp.setitem(sys.modules, ".".join(parts[:k]), types.ModuleType(".".join(parts[:k])))
        sys.modules[DASSL_MODULE].Datum = DasslDatum
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"train": list(train), "val": list(val)},
                                      protocol=pickle.HIGHEST_PROTOCOL))


PETS = list(COLOURS)[:5]
# The shots CoOp's file names for (2 shots, seed 1): the last two training images per class.
PICKLED_SHOTS = [f"{name}_{i}.png" for name in PETS for i in (2, 3)]


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory):
    """Miniature datasets in CoOp's layout: a zhou-split one (oxford_pets, with a CoOp
    split_fewshot pickle for 2 shots, seed 1) and FGVC."""
    import numpy as np

    root = tmp_path_factory.mktemp("coop")
    rng = np.random.default_rng(0)
    pets = root / "oxford_pets"
    (pets / "images").mkdir(parents=True)
    split = {"train": [], "val": [], "test": []}
    for y, name in enumerate(PETS):
        for i in range(8):
            file = f"{name}_{i}.png"
            render(COLOURS[name], 32, rng).save(pets / "images" / file)
            split["train" if i < 4 else "val" if i < 5 else "test"].append([file, y, name])
    (pets / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    write_split_fewshot(pets / "split_fewshot" / "shot_2-seed_1.pkl", [
        DasslDatum(f"{AUTHOR_ROOT}/oxford_pets/images/{file}", PETS.index(file.split("_")[0]),
                   file.split("_")[0]) for file in PICKLED_SHOTS],
        val=[DasslDatum(f"{AUTHOR_ROOT}/oxford_pets/images/red_4.png", 0, "red")])
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


@pytest.fixture
def trainings(monkeypatch):
    """Every training the bench runs (the real one), with its classes, seed, lambda, images."""
    calls = []
    real = b2n.train_clipfit

    def counting(base, train_set, config, **kwargs):
        calls.append({"classes": len(train_set.classnames), "seed": config.seed,
                      "lambda": config.lambda_kd, "epochs": config.epochs,
                      "files": [os.path.basename(s.source) for s in train_set.samples]})
        return real(base, train_set, config, **kwargs)

    monkeypatch.setattr(b2n, "train_clipfit", counting)
    return calls


def run(root, out, *args):
    return main(["--root", str(root), "--model", "clipfit-tiny", "--epochs", "1",
                 "--workers", "0", "--out", str(out), *args])


def test_reads_the_coop_layouts(coop_root):
    pets = read_dataset(coop_root, "oxford_pets")
    assert [len(pets[p]) for p in ("train", "val", "test")] == [20, 5, 15]
    assert pets["train"][0].path.endswith("oxford_pets/images/red_0.png")
    air = read_dataset(coop_root, "fgvc_aircraft")
    assert [i.classname for i in air["test"]] == ["707-320", "A300B4", "Cessna 172"]
    assert [i.label for i in air["train"]] == [0, 1, 2]
    assert DATASETS["food101"].epochs == 10 and DATASETS["dtd"].epochs == 100
    assert DATASETS["dtd"].fewshot_lambda == DATASETS["sun397"].fewshot_lambda == 8
    assert DATASETS["oxford_pets"].fewshot_lambda == 2
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
    # the shots of all classes, cut to the base ones, are the base classes' own draw
    base_train = subsample_classes(train, "base")[1]
    assert [i.path for i in picked if i.label < 3] == \
        [i.path for i in few_shot(base_train, 2, seed=1)]


def test_split_fewshot_pickle_is_read_without_dassl(coop_root):
    assert "dassl" not in sys.modules
    train = read_dataset(coop_root, "oxford_pets")["train"]
    items, source = training_shots(coop_root, "oxford_pets", train, 2, seed=1)
    assert source == "split_fewshot/shot_2-seed_1.pkl"
    assert [os.path.basename(i.path) for i in items] == PICKLED_SHOTS
    assert all(i.path.startswith(str(coop_root / "oxford_pets" / "images")) for i in items)
    assert [i.label for i in items] == [y for y in range(5) for _ in (2, 3)]
    # no file for seed 2 (nor for 4 shots): drawn with the seed, as before
    assert training_shots(coop_root, "oxford_pets", train, 2, seed=2) == \
        (few_shot(train, 2, seed=2), None)
    assert [os.path.basename(i.path) for i in few_shot(train, 2, seed=1)] != PICKLED_SHOTS


@pytest.mark.parametrize("payload", [os.system, eval])
def test_a_pickle_naming_anything_but_datum_is_refused(tmp_path, payload):
    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return payload, (f"open({str(marker)!r}, 'w')" if payload is eval
                             else f"touch {marker}",)

    path = tmp_path / "shot_2-seed_1.pkl"
    path.write_bytes(pickle.dumps({"train": [Hostile()], "val": []}))
    with pytest.raises(SplitFileError, match=rf"{path}.*refusing to load \w+\.{payload.__name__}"):
        read_split_fewshot(path)
    assert not marker.exists()


def test_a_split_file_that_does_not_fit_the_dataset_is_refused(coop_root, tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(SplitFileError, match="garbage.pkl"):
        read_split_fewshot(path)
    path.write_bytes(pickle.dumps({"train": ["a string, not a Datum"]}))
    with pytest.raises(SplitFileError, match="expected"):
        read_split_fewshot(path)
    root = tmp_path / "coop"
    (root / "oxford_pets").mkdir(parents=True)
    (root / "oxford_pets" / "images").symlink_to(coop_root / "oxford_pets" / "images")
    train = read_dataset(coop_root, "oxford_pets")["train"]
    train = [b2n.Item(i.path.replace(str(coop_root), str(root)), i.label, i.classname)
             for i in train]
    for datum in (DasslDatum(f"{AUTHOR_ROOT}/oxford_pets/images/red_7.png", 0, "red"),  # test
                  DasslDatum(f"{AUTHOR_ROOT}/oxford_pets/images/red_1.png", 3, "red"),  # label
                  DasslDatum("/elsewhere/red_1.png", 0, "red")):  # not under the image folder
        write_split_fewshot(root / "oxford_pets" / "split_fewshot" / "shot_1-seed_1.pkl",
                            [datum])
        with pytest.raises(SplitFileError, match="not one of oxford_pets's training images"):
            training_shots(root, "oxford_pets", train, 1, seed=1)


def test_one_pass_scores_every_model_as_the_classifier_does(coop_root):
    from clipfit_core.classify import Classifier, class_text_features
    from clipfit_core.delta import applied
    from clipfit_core.models import create_base_model
    from clipfit_core.train import TrainConfig, train_clipfit

    base = create_base_model("clipfit-tiny")
    items = read_dataset(coop_root, "oxford_pets")
    names = list(PETS)
    train = b2n.FewShotDataset(names, [b2n.Sample(i.path, i.label) for i in items["train"]])
    delta = train_clipfit(base, train, TrainConfig(epochs=1, templates="oxford_pets")).delta
    models = {"zero-shot": None, "tuned": delta}
    templates = b2n.resolve_templates("oxford_pets")
    text = {}
    for key, d in models.items():
        with applied(base, d):
            text[key] = class_text_features(base, names, templates)
    paths = [i.path for i in items["test"]]
    in_workers = b2n.predict(base, paths, models, text, 3, workers=1, batch_size=4)
    in_process = b2n.predict(base, paths, models, text, 3, workers=0, batch_size=64)
    classifier = Classifier(base)
    for key, d in models.items():
        assert all(torch.equal(in_workers[key][g], in_process[key][g])
                   for g in ("all", "base", "new"))
        logits = classifier.logits(paths, names, templates, d)
        assert torch.equal(in_workers[key]["all"], logits.argmax(-1))
        assert torch.equal(in_workers[key]["base"], logits[:, :3].argmax(-1))
        assert torch.equal(in_workers[key]["new"], logits[:, 3:].argmax(-1) + 3)


def test_harness_end_to_end_on_clipfit_tiny(coop_root, tmp_path, capsys, trainings):
    assert main(["--root", str(coop_root), "--model", "clipfit-tiny", "--datasets",
                 "oxford_pets,fgvc_aircraft", "--seeds", "1,2", "--shots", "4", "--epochs", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| oxford_pets |" in out and "| average |" in out and "few-shot" not in out
    assert len(trainings) == 4 and {t["lambda"] for t in trainings} == {8.0}
    report = json.loads((tmp_path / "base2new.json").read_text())
    pets = report["results"]["oxford_pets"]
    assert pets["classes"] == {"base": 3, "new": 2, "all": 5}
    assert [(r["protocol"], r["seed"]) for r in pets["runs"]] == [("base2new", 1),
                                                                   ("base2new", 2)]
    for r in pets["runs"]:
        assert 0 <= r["base"] <= 1 and 0 <= r["new"] <= 1 and r["shots_file"] is None
    assert "fewshot" not in pets
    avg = report["average"]["clipfit"]
    assert avg["hm"] == pytest.approx(2 * avg["base"] * avg["new"] / (avg["base"] + avg["new"]))
    assert sorted(os.listdir(tmp_path / "deltas" / "oxford_pets")) == ["base2new-seed1",
                                                                      "base2new-seed2"]


def test_both_protocols_split_fewshot_shots_and_resume(coop_root, tmp_path, trainings,
                                                       monkeypatch):
    passes = []
    real_predict = b2n.predict
    monkeypatch.setattr(b2n, "predict", lambda *a, **k: passes.append(a[2]) or
                        real_predict(*a, **k))
    datasets = ["--datasets", "oxford_pets,fgvc_aircraft", "--shots", "2"]
    assert run(coop_root, tmp_path, *datasets, "--protocol", "both", "--seeds", "1") == 0
    assert [(t["classes"], t["seed"], t["lambda"]) for t in trainings] == \
        [(3, 1, 8.0), (5, 1, 2.0), (2, 1, 8.0), (3, 1, 2.0)]
    # oxford_pets seed 1 trained on the pickled shots: base classes, then all
    assert trainings[0]["files"] == PICKLED_SHOTS[:6]
    assert trainings[1]["files"] == PICKLED_SHOTS
    # one pass over each dataset's test images scores zero-shot and both deltas
    assert [sorted(m) for m in passes] == [["base2new-1", "fewshot-1", "zero-shot"]] * 2
    first = json.loads((tmp_path / "base2new.json").read_text())
    pets = first["results"]["oxford_pets"]
    assert [r["shots_file"] for r in pets["runs"]] == ["split_fewshot/shot_2-seed_1.pkl"] * 2
    assert pets["clipfit"]["std"] == {"base": 0.0, "new": 0.0, "hm": 0.0}  # one seed

    trainings.clear()
    passes.clear()
    assert run(coop_root, tmp_path, *datasets, "--protocol", "both", "--seeds", "1,2",
               "--resume") == 0
    assert [(t["classes"], t["seed"]) for t in trainings] == [(3, 2), (5, 2), (2, 2), (3, 2)]
    assert [sorted(m) for m in passes] == [["base2new-2", "fewshot-2"]] * 2  # zero-shot kept
    report = json.loads((tmp_path / "base2new.json").read_text())
    for name in ("oxford_pets", "fgvc_aircraft"):
        r = report["results"][name]
        assert r["zero-shot"] == first["results"][name]["zero-shot"]
        assert r["runs"][:1] == first["results"][name]["runs"][:1]  # seed 1 kept as it was
        b2n_runs = [x for x in r["runs"] if x["protocol"] == "base2new"]
        fs_runs = [x for x in r["runs"] if x["protocol"] == "fewshot"]
        assert [x["seed"] for x in b2n_runs] == [x["seed"] for x in fs_runs] == [1, 2]
        c, f = r["clipfit"], r["fewshot"]
        assert c["base"] == pytest.approx(statistics.fmean(x["base"] for x in b2n_runs))
        assert c["std"]["new"] == pytest.approx(statistics.pstdev(x["new"] for x in b2n_runs))
        assert c["std"]["hm"] == pytest.approx(statistics.pstdev(x["hm"] for x in b2n_runs))
        assert c["hm"] == pytest.approx(harmonic_mean(c["base"], c["new"]))
        assert f["all"] == pytest.approx(statistics.fmean(x["all"] for x in fs_runs))
        assert f["std"]["all"] == pytest.approx(statistics.pstdev(x["all"] for x in fs_runs))
        assert c["seeds"] == f["seeds"] == [1, 2]
    avg = report["average"]
    per_seed_base = [statistics.fmean(x["base"] for r in report["results"].values()
                                      for x in r["runs"] if x["protocol"] == "base2new"
                                      and x["seed"] == s) for s in (1, 2)]
    assert avg["clipfit"]["base"] == pytest.approx(statistics.fmean(per_seed_base))
    assert avg["clipfit"]["std"]["base"] == pytest.approx(statistics.pstdev(per_seed_base))
    assert set(avg["fewshot"]["std"]) == {"all"} and avg["fewshot"]["datasets"] == 2
    assert avg["zero-shot"]["all"] == pytest.approx(statistics.fmean(
        r["zero-shot"]["all"] for r in report["results"].values()))
    md = (tmp_path / "base2new.md").read_text()
    assert "| average |" in md and "±" in md and "ClipFit few-shot" in md
    assert not list(tmp_path.glob("*.tmp"))

    trainings.clear()
    passes.clear()
    assert run(coop_root, tmp_path, *datasets, "--protocol", "both", "--seeds", "1,2",
               "--resume") == 0
    assert trainings == [] and passes == []  # everything done: nothing trained or evaluated
    assert json.loads((tmp_path / "base2new.json").read_text())["results"] == report["results"]


def test_fewshot_protocol_alone(coop_root, tmp_path, trainings, capsys):
    assert run(coop_root, tmp_path, "--datasets", "oxford_pets", "--seeds", "2", "--shots", "2",
               "--protocol", "fewshot", "--fewshot-lambda", "0") == 0
    assert [(t["classes"], t["lambda"], t["files"]) for t in trainings] == [
        (5, 0.0, [os.path.basename(i.path) for i in few_shot(
            read_dataset(coop_root, "oxford_pets")["train"], 2, seed=2)])]
    report = json.loads((tmp_path / "base2new.json").read_text())
    pets = report["results"]["oxford_pets"]
    assert "clipfit" not in pets and [r["protocol"] for r in pets["runs"]] == ["fewshot"]
    assert 0 <= pets["fewshot"]["all"] <= 1 and 0 <= pets["zero-shot"]["all"] <= 1
    assert "clipfit" not in report["average"] and "fewshot" in report["average"]
    out = capsys.readouterr().out
    assert "| oxford_pets |" in out and "ZS base" not in out


def test_an_interrupted_dataset_resumes_from_its_saved_deltas(coop_root, tmp_path, trainings,
                                                              monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("stopped during the evaluation")

    args = ["--datasets", "oxford_pets", "--seeds", "1,2", "--shots", "2"]
    with monkeypatch.context() as mp:
        mp.setattr(b2n, "predict", crash)
        with pytest.raises(RuntimeError, match="stopped"):
            run(coop_root, tmp_path, *args)
    assert len(trainings) == 2 and not (tmp_path / "base2new.json").exists()
    trainings.clear()
    assert run(coop_root, tmp_path, *args, "--resume") == 0
    assert trainings == []  # both deltas came from OUT/deltas
    report = json.loads((tmp_path / "base2new.json").read_text())
    assert [r["seed"] for r in report["results"]["oxford_pets"]["runs"]] == [1, 2]
    # a saved delta of other settings is trained again
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "deltas", other / "deltas")
    assert run(coop_root, other, *args, "--resume", "--lambda", "4") == 0
    assert [t["lambda"] for t in trainings] == [4.0, 4.0]
    with pytest.raises(SystemExit, match="other settings.*'shots': \\(2, 3\\)"):
        run(coop_root, tmp_path, "--datasets", "oxford_pets", "--shots", "3", "--resume")
