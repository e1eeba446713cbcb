import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipfit_core import cli
from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv], weights_dir=Path("unused-weights-dir"))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_params_console_script_ends_with_the_total():
    script = Path(sys.executable).with_name("clipfit")  # installed beside this interpreter
    out = subprocess.run([str(script), "params", "ViT-B-16"], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert out[-1] == "total: 46080"
    assert out[0] == "transformer.resblocks.0.mlp.c_proj.bias\t512"
    assert len(out) == 12 + 52 + 1


def test_train_classify_eval_info_end_to_end(capsys, tmp_path, colour_train, colour_test):
    out_dir = tmp_path / "delta"
    code, out, err = run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out",
                         out_dir, "--epochs", 40, "--lr", 0.1, "--batch-size", 16,
                         "--val-fraction", 0.25, "--shots", 12, "--template",
                         "a photo of the colour {}.")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["trainable"] == 896 and "val_accuracy" in summary
    assert "zero_shot_val_accuracy" in summary and "train" in err  # the progress bar
    assert sorted(p.name for p in out_dir.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    images = sorted(colour_test.rglob("*.png"))[:3]
    code, out, err = run(capsys, "classify", *images, "--adapter", out_dir, "--top-k", 2)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    for r in rows:
        assert len(r["top_k"]) == 2 and r["label"] == r["top_k"][0]["label"]
        assert r["label"] in {"blue", "green", "red", "yellow"}

    code, out, err = run(capsys, "eval", colour_test, "--adapter", out_dir, "--json", "--quiet")
    assert code == 0, err
    tuned = json.loads(out)
    code, out, err = run(capsys, "eval", colour_test, "--model", "clipfit-tiny", "--json")
    zero_shot = json.loads(out)
    assert tuned["images"] == zero_shot["images"] == 120
    assert tuned["accuracy"] >= 0.7 > zero_shot["accuracy"]
    assert set(tuned["per_class_accuracy"]) == {"blue", "green", "red", "yellow"}
    # with an adapter: zero-shot side by side on the same images, and the stored report
    code, out, err = run(capsys, "eval", colour_test, "--model", "clipfit-tiny", "--json",
                         "--template", "a photo of the colour {}.")  # the adapter's template
    assert tuned["evaluation"]["zero_shot"]["accuracy"] == round(json.loads(out)["accuracy"], 4)
    assert tuned["evaluation"]["tuned"]["accuracy"] == round(tuned["accuracy"], 4)
    assert tuned["held_out"]["calibration"]["temperature"] > 0
    assert "evaluation" not in zero_shot

    code, out, err = run(capsys, "export", out_dir, "--out", tmp_path / "merged")
    assert code == 0, err
    assert json.loads(out)["files"] == ["clipfit_classes.json", "open_clip_config.json",
                                        "open_clip_model.safetensors"]

    code, out, err = run(capsys, "info", out_dir)
    info = json.loads(out)
    assert info["templates"] == ["a photo of the colour {}."]
    assert info["hyperparameters"]["epochs"] == 40 and info["trainable_count"] == 896
    assert info["files"][WEIGHTS_NAME] > 896 * 4


def test_eval_on_new_classes_uses_the_datasets_own_folders(capsys, tmp_path, colour_train):
    from clipfit_core.synthetic import write_dataset

    run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out", tmp_path / "d",
        "--epochs", 1, "--quiet")
    new = write_dataset(tmp_path / "new", ["purple", "cyan"], per_class=3)
    code, out, _ = run(capsys, "eval", new, "--adapter", tmp_path / "d", "--json", "--quiet")
    assert code == 0 and set(json.loads(out)["per_class_accuracy"]) == {"purple", "cyan"}


def test_zero_shot_classify_and_user_errors(capsys, tmp_path, colour_test):
    image = next(colour_test.rglob("*.png"))
    code, out, _ = run(capsys, "classify", image, "--model", "clipfit-tiny", "--classes",
                       "cat,dog,bird", "--top-k", 3)
    assert code == 0 and len(json.loads(out)["top_k"]) == 3
    code, _, err = run(capsys, "classify", image, "--model", "clipfit-tiny")
    assert code == 2 and "--classes" in err
    code, _, err = run(capsys, "classify", tmp_path / "missing.png", "--model", "clipfit-tiny",
                       "--classes", "a,b")
    assert code == 2 and "missing.png" in err
    code, _, err = run(capsys, "train", tmp_path, "--model", "clipfit-tiny", "--out", tmp_path)
    assert code == 2 and "no class sub-folders" in err
    code, _, err = run(capsys, "eval", colour_test, "--adapter", tmp_path)
    assert code == 2 and CONFIG_NAME in err
    code, _, err = run(capsys, "train", colour_test, "--model", "ViT-B-16:openai", "--offline",
                       "--out", tmp_path / "x")
    assert code == 2 and "ViT-B-16:/path/to/file" in err
    assert not (tmp_path / "x").exists()


def test_module_entry_point_reports_version():
    out = subprocess.run([sys.executable, "-m", "clipfit", "--version"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("clipfit ")


def test_train_with_auto_hyperparameters(capsys, tmp_path, colour_train):
    code, _, err = run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out",
                         tmp_path / "d", "--epochs", "auto", "--lr", "auto", "--quiet")
    assert code == 0, err
    assert "auto: epochs 30, lr 0.1" in err
    info = json.loads((tmp_path / "d" / CONFIG_NAME).read_text())
    assert (info["hyperparameters"]["epochs"], info["hyperparameters"]["lr"]) == (30, 0.1)
    with pytest.raises(SystemExit) as e:  # argparse's own refusal
        run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out", tmp_path / "e",
            "--epochs", "often")
    assert e.value.code == 2 and "invalid int value: 'often'" in capsys.readouterr().err


def test_classify_calibrates_and_answers_unknown_as_the_api_does(capsys, tmp_path,
                                                                  colour_train, colour_test):
    out_dir = tmp_path / "delta"
    code, _, err = run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out",
                       out_dir, "--epochs", 6, "--lr", 0.1, "--batch-size", 16,
                       "--val-fraction", 0.25, "--quiet")
    assert code == 0, err
    calibration = json.loads((out_dir / CONFIG_NAME).read_text())["calibration"]
    images = sorted(colour_test.rglob("*.png"))[:4]

    def answers(*flags):
        code, out, err = run(capsys, "classify", *images, "--adapter", out_dir, "--top-k", 4,
                             *flags)
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]

    calibrated, plain = answers(), answers("--no-calibration")
    assert [r["top_k"][0]["label"] for r in calibrated] == \
        [r["top_k"][0]["label"] for r in plain]  # the temperature keeps the ranking
    if calibration["temperature"] != 1.0:
        assert [r["top_k"] for r in calibrated] != [r["top_k"] for r in plain]
    rejected = answers("--reject-unknown")
    for row in rejected:
        top = row["top_k"][0]
        assert row["unknown"] == (top["prob"] < calibration["threshold"])
        assert row["label"] == ("unknown" if row["unknown"] else top["label"])
    assert all(r["unknown"] and r["label"] == "unknown" for r in answers("--threshold", 1))
    assert not any(r["unknown"] for r in answers("--threshold", 0))
    # the API's rules and words
    code, _, err = run(capsys, "classify", *images, "--adapter", out_dir, "--reject-unknown",
                       "--no-calibration")
    assert code == 2 and "on calibrated probabilities" in err
    code, _, err = run(capsys, "classify", *images, "--adapter", out_dir, "--reject-unknown",
                       "--template", "a blurry photo of {}.")
    assert code == 2 and "with others give a threshold" in err
    code, _, err = run(capsys, "classify", *images, "--model", "clipfit-tiny", "--classes",
                       "red,green", "--reject-unknown")
    assert code == 2 and "for zero-shot give a threshold" in err
    code, out, _ = run(capsys, "classify", images[0], "--model", "clipfit-tiny", "--classes",
                       "red,green", "--threshold", 1)
    assert code == 0 and json.loads(out)["label"] == "unknown"
    with pytest.raises(SystemExit):
        run(capsys, "classify", images[0], "--adapter", out_dir, "--threshold", 1.5)
    assert "not a probability from 0 to 1" in capsys.readouterr().err


def test_train_recipe_under_explicit_flags(capsys, tmp_path, colour_train):
    from clipfit_core.recipes import SMALL_BASE

    code, _, err = run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out",
                       tmp_path / "d", "--recipe", "small-base", "--epochs", 2, "--quiet")
    assert code == 0, err
    hp = json.loads((tmp_path / "d" / CONFIG_NAME).read_text())["hyperparameters"]
    assert hp["epochs"] == 2  # the flag given wins
    assert {k: hp[k] for k in SMALL_BASE.values if k != "epochs"} == \
        {k: v for k, v in SMALL_BASE.values.items() if k != "epochs"}
    with pytest.raises(SystemExit):
        run(capsys, "train", colour_train, "--model", "clipfit-tiny", "--out", tmp_path / "e",
            "--recipe", "fast")
    assert "invalid choice: 'fast'" in capsys.readouterr().err
