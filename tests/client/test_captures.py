"""Capture and review through ``clipfit.client`` and ``clipfit remote``, against a real
``clipfit serve`` (its capture writer runs in the server process: the tests wait for the
captures to appear)."""

from __future__ import annotations

import hashlib
import json

import pytest

from clipfit.cli import main as clipfit_main
from clipfit.client import ApiError, Client
from tests.client.test_webhooks import until
from tests.service.test_aliases import _delta_zip

CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def images(colour_train):
    """One image of each class: distinct bytes."""
    return [min((colour_train / c).iterdir()) for c in CLASSES]


def test_client_capture_and_review(url, key, tiny, images, tmp_path):
    with Client(url, key) as cf:
        adapter = cf.adapters.import_zip(_delta_zip(tiny, 11, CLASSES), name="review")
        assert cf.adapters.get_capture(adapter.id).enabled is False
        with pytest.raises(ApiError) as e:
            cf.adapters.set_capture(adapter.id, sample_rate=2, classes=["purple"])
        assert e.value.status == 422 and len(e.value.problems) == 2
        settings = cf.adapters.set_capture("review@1", sample_rate=1.0, max_per_hour=50)
        assert (settings.enabled, settings.lineage, settings.max_per_hour) == (True, "review", 50)
        assert cf.adapters.get_capture(adapter.id) == settings

        answers = cf.classify(images, adapter="review@1", top_k=2)
        kept = until(lambda: len(found := list(cf.adapters.captures(adapter.id))) == 4
                     and found)
        sent = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in images}
        assert {c.raw["sha256"] for c in kept} == set(sent)
        by_file = {c.raw["sha256"]: c for c in kept}
        for path, answer in zip(images, answers):
            c = by_file[hashlib.sha256(path.read_bytes()).hexdigest()]
            assert (c.predicted, c.rule, c.state) == (answer.label, "sample_rate", "pending")
        one = kept[0]
        assert cf.adapters.capture(adapter.id, one.id) == one
        saved = tmp_path / "one.png"
        data = cf.adapters.capture_image(adapter.id, one.id, saved)
        assert saved.read_bytes() == data == sent[one.raw["sha256"]].read_bytes()

        labelled = cf.adapters.label_capture(adapter.id, one.id, "red")
        assert (labelled.state, labelled.label, labelled.new_class) == ("labelled", "red", False)
        assert cf.adapters.label_capture(adapter.id, kept[1].id, discard=True).state == \
            "discarded"
        with pytest.raises(ApiError) as e:
            cf.adapters.label_captures(adapter.id, [{"id": kept[2].id, "label": "purple"},
                                                    {"id": kept[3].id, "label": "red"},
                                                    {"id": "f" * 32, "discard": True}])
        assert e.value.status == 422
        assert [p.split(":")[0] for p in e.value.problems] == ["items[0]", "items[2]"]
        done = cf.adapters.label_captures(adapter.id, [
            {"id": kept[2].id, "label": "purple", "new_class": True},
            {"id": kept[3].id, "label": "red"}])
        assert [(c.label, c.new_class) for c in done] == [("purple", True), ("red", False)]
        assert len(list(cf.adapters.captures(adapter.id, state="labelled"))) == 3
        assert [c.id for c in cf.adapters.captures(adapter.id, state="discarded")] == \
            [kept[1].id]

        cf.adapters.disable_capture(adapter.id)
        assert cf.adapters.get_capture(adapter.id).enabled is False


def test_remote_capture_and_review(url, key, tiny, images, capsys, tmp_path):
    def remote(*args: str) -> tuple[int, str, str]:
        code = clipfit_main(["remote", "--url", url, "--api-key", key, *args])
        out, err = capsys.readouterr()
        return code, out, err

    with Client(url, key) as cf:
        adapter = cf.adapters.import_zip(_delta_zip(tiny, 12, CLASSES), name="cli-review")
    code, out, err = remote("capture", "set", "cli-review@1", "--below-confidence", "1.0",
                            "--max-per-day", "10", "--retention-days", "7")
    assert code == 0, err
    assert out.strip() == ("capture on for cli-review: below_confidence 1.0; at most 10 per "
                           "day; kept 7 days")
    code, out, _ = remote("--json", "capture", "show", adapter.id)
    assert code == 0 and json.loads(out)["below_confidence"] == 1.0
    code, _, err = remote("capture", "set", adapter.id, "--classes", "mauve")
    assert code == 1 and "422" in err and "'mauve'" in err

    code, out, err = remote("classify", *map(str, images), "--adapter", "cli-review@1")
    assert code == 0, err
    with Client(url, key) as cf:
        until(lambda: len(list(cf.adapters.captures(adapter.id))) == 4)
    code, out, _ = remote("captures", "ls", adapter.id, "--rule", "below_confidence")
    lines = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(lines) == 4 and {line[2] for line in lines} == {"below_confidence"}
    ids = [line[0] for line in lines]

    code, out, _ = remote("captures", "label", adapter.id, "green", ids[0], ids[1])
    assert code == 0 and out.count("-> green") == 2
    code, out, _ = remote("captures", "label", adapter.id, "teal", ids[2], "--new-class")
    assert code == 0 and "-> teal (new class)" in out
    code, out, _ = remote("captures", "discard", adapter.id, ids[3])
    assert code == 0 and "discarded" in out
    code, _, err = remote("captures", "label", adapter.id, "teal", ids[3])
    assert code == 1 and "items[0]" in err and "new_class" in err
    code, out, _ = remote("--json", "captures", "ls", adapter.id, "--state", "labelled")
    assert code == 0 and sorted(c["label"] for c in json.loads(out)) == ["green", "green", "teal"]

    code, out, _ = remote("captures", "show", adapter.id, ids[2])
    assert code == 0 and "-> teal" in out and "top: " in out
    target = tmp_path / "capture.png"
    code, out, _ = remote("captures", "image", adapter.id, ids[2], "-o", str(target))
    assert code == 0 and str(target) in out
    assert hashlib.sha256(target.read_bytes()).hexdigest() in {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in images}

    code, out, _ = remote("capture", "off", adapter.id)
    assert code == 0 and out.strip() == "capture is off for cli-review"
    code, _, err = remote("captures", "ls", "no-such@1")
    assert code == 1 and "404" in err
