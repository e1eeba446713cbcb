"""Batch predictions through ``clipfit.client`` and ``clipfit remote predict``, against a
real ``clipfit serve`` (SQLite, its in-process worker runs the prediction): the zero-config
service supports them."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest

from clipfit.cli import main as clipfit_main
from clipfit.client import ApiError, Client
from tests.service.test_aliases import _delta_zip

CLASSES = ["blue", "green", "red", "yellow"]


@pytest.fixture(scope="module")
def adapter(url, key, tiny) -> str:
    with Client(url, key) as cf:
        return cf.adapters.import_zip(_delta_zip(tiny, 11, CLASSES), name="batch-client").id


@pytest.fixture(scope="module")
def photos(colour_test, tmp_path_factory):
    """A folder of unlabelled images in sub-folders (their names are only names)."""
    root = tmp_path_factory.mktemp("photos")
    for c in CLASSES:
        (root / f"shoot-{c}").mkdir()
        for p in sorted((colour_test / c).iterdir())[:2]:
            (root / f"shoot-{c}" / p.name).write_bytes(p.read_bytes())
    return root


def test_client_predictions(url, key, adapter, photos):
    with Client(url, key) as cf:
        p = cf.predictions.create(photos, adapter=adapter, top_k=2)
        assert p.status == "queued" and p.counts["images"] == 8 and p.source == "zip"
        kinds = [e.kind for e in cf.predictions.watch(p.id)]
        assert kinds[0] == "queued" and "progress" in kinds and kinds[-1] == "succeeded"
        p = cf.predictions.wait(p.id, timeout=120)
        assert p.status == "succeeded" and p.counts["classified"] == 8
        rows = cf.predictions.rows(p.id)
        names = sorted(f.relative_to(photos).as_posix() for f in photos.rglob("*.png"))
        assert [r["name"] for r in rows] == names
        answers = cf.classify([photos / n for n in names], adapter=adapter, top_k=2)
        assert [r["label"] for r in rows] == [a.label for a in answers]
        table = list(csv.DictReader(io.StringIO(cf.predictions.results(p.id, format="csv")
                                                .decode())))
        assert [t["label"] for t in table] == [r["label"] for r in rows]
        assert p.id in [q.id for q in cf.predictions.list()]

        # stored images (once in a dataset) by digest, zero-shot
        cf.datasets.create(photos)
        digests = [r["sha256"] for r in rows[:3]]
        again = cf.predictions.wait(cf.predictions.create(
            images=digests, classes=["red", "blue"]).id, timeout=120)
        assert [r["name"] for r in cf.predictions.rows(again.id)] == digests
        with pytest.raises(ApiError) as refused:
            cf.predictions.create(images=[hashlib.sha256(b"never stored").hexdigest()],
                                  adapter=adapter)
        assert refused.value.status == 422 and "no such image" in refused.value.problems[0]
        with pytest.raises(ApiError) as missing:
            cf.predictions.create(photos, adapter="no-such@1")
        assert missing.value.status == 404


def test_remote_predict(url, key, adapter, photos, tmp_path, capsys):
    def remote(*args: str) -> tuple[int, str, str]:
        code = clipfit_main(["remote", "--url", url, "--api-key", key, *args])
        out, err = capsys.readouterr()
        return code, out, err

    out_jsonl = tmp_path / "out.jsonl"
    code, _, err = remote("predict", str(photos), "--adapter", "batch-client@1", "-o",
                          str(out_jsonl))
    assert code == 0, err
    assert "8 answers written to" in err
    rows = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(rows) == 8 and all(r["label"] in CLASSES for r in rows)

    out_csv = tmp_path / "zero-shot.csv"
    code, _, err = remote("predict", str(photos), "--classes", "red,blue,green", "--top-k",
                          "1", "-o", str(out_csv))
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(table) == 8 and list(table[0])[-2:] == ["label_1", "prob_1"]

    code, out, _ = remote("--json", "predictions", "ls")
    listed = json.loads(out)
    assert code == 0 and len(listed) >= 2 and listed[0]["classes"] == ["red", "blue", "green"]
    code, out, _ = remote("predictions", "show", listed[0]["id"])
    assert code == 0 and "8 of 8 images done" in out
    code, _, err = remote("predict", str(photos))  # neither an adapter nor classes
    assert code != 0 and "adapter" in err and "classes" in err, err
