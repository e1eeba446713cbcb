"""What an adapter served, through ``clipfit.client`` and ``clipfit remote``, against a real
``clipfit serve`` (SQLite): its flusher thread adds the counts to the database within
15 seconds, so the tests wait for them."""

from __future__ import annotations

import json

import pytest

from clipfit.cli import main as clipfit_main
from clipfit.client import ApiError, Client
from tests.client.test_webhooks import until
from tests.service.test_aliases import _delta_zip

CLASSES = ["red", "green", "blue", "yellow"]


def test_client_and_remote_stats(url, key, tiny, colour_train, capsys):
    images = [min((colour_train / c).iterdir()) for c in CLASSES]
    with Client(url, key) as cf:
        first = cf.adapters.import_zip(_delta_zip(tiny, 21, CLASSES), name="watched")
        second = cf.adapters.import_zip(_delta_zip(tiny, 22, CLASSES), name="watched")
        answers = cf.classify(images, adapter="watched@1", threshold=1.0)
        assert all(a.unknown for a in answers)
        cf.classify(images[:2], adapter="watched@2")
        served = until(lambda: (s := cf.adapters.stats("watched@2", lineage=True))
                       ["versions"][0]["totals"]["predictions"] == 4
                       and s["versions"][1]["totals"]["predictions"] == 2 and s, timeout=40)
        one, two = served["versions"]
        assert (one["adapter_id"], two["adapter_id"]) == (first.id, second.id)
        assert one["totals"]["unknown_share"] == 1.0 and two["totals"]["unknown_share"] == 0.0
        assert sum(one["totals"]["histogram"]) == 4 and served["hours"] == 24
        alone = cf.adapters.stats(first.id, hours=1)
        assert [v["adapter_id"] for v in alone["versions"]] == [first.id]
        with pytest.raises(ApiError) as e:
            cf.adapters.stats(first.id, hours=0)
        assert e.value.status == 422

    def remote(*args: str) -> tuple[int, str, str]:
        code = clipfit_main(["remote", "--url", url, "--api-key", key, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = remote("adapters", "stats", "watched@1", "--hours", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{first.id} watched v1: 4 answers in 2 h; unknown 100.0% "
                               "(held-out -), low confidence ")
    assert lines[0].endswith("(held-out -), captured 0.0%")
    assert lines[1].split("\t") == ["  hour (UTC)", "answers", "unknown", "low confidence",
                                    "captured"]
    rows = [line.split("\t") for line in lines[2:]]  # one hour (two if one just turned)
    assert sum(int(r[1]) for r in rows) == 4 and {r[2] for r in rows} == {"100.0%"}
    code, out, _ = remote("--json", "adapters", "stats", "watched@2", "--lineage")
    assert code == 0 and [v["version"] for v in json.loads(out)["versions"]] == [1, 2]
    code, _, err = remote("adapters", "stats", "nothing@1")
    assert code == 1 and "404" in err
