"""The loop after training on an adapter's web page, in a real browser against a real
``clipfit serve`` (test_web_page's server, browser and page): retrain from the captures
labelled through the API (the API's refusals shown in its words), the comparison a retrained
version stores, promotion by hand, and what a version served, charted per hour.

A retrain needs a version trained on this server (its images), so one is trained here, and
its retrain runs to the end in the server's worker. The other versions are imported; the
comparison of one is stored in the database as worker/promotion.py stores it."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
import torch
from sqlalchemy.orm import Session

from clipfit_core.compare import version_comparison
from registry.db import make_engine
from registry.models import Adapter

from . import test_web_page as web
from .conftest import FINISHED, image_files, wait_for
from .test_aliases import _delta_zip
from .test_retrain import unique_files
from .test_web_page import expect, sign_in, snap
from .test_web_review import captured, open_adapter

# test_web_page's fixtures: a module-scoped ``clipfit serve`` and browser of this module's own
browser, page, server, shots = web.browser, web.page, web.server, web.shots

CLASSES = ["red", "green", "blue", "yellow"]
TRAIN = {"base_model": "clipfit-tiny", "epochs": "2", "lr": "0.1", "batch_size": "16",
         "val_fraction": "0.25", "seed": "1"}


def fixed(x: float) -> str:
    """``(100 * x).toFixed(1)`` without its sign: half up, on the exact double, as JS does."""
    return str(abs(Decimal(100 * x)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def pct(x: float | None) -> str:
    return "—" if x is None else f"{fixed(x)}%"


def points(x: float | None) -> str:
    return "—" if x is None else f"{'+' if x >= 0 else '-'}{fixed(x)}"


def sentence(message: str) -> str:
    """The page's way of showing an API message: capitalised, with a full stop."""
    return message[0].upper() + message[1:] + ("" if message[-1] in ".!?" else ".")


def job_ids(server) -> list[str]:
    return [j["id"] for j in server.client.get("/v1/jobs", params={"limit": 200}).json()["data"]]


def imported(server, tiny, name: str | None, seed: int) -> dict:
    r = server.client.post("/v1/adapters", data={"name": name} if name else {},
                           files={"file": ("d.zip", _delta_zip(tiny, seed, CLASSES))})
    assert r.status_code == 201, r.text
    return r.json()


def store_metrics(server, adapter_id: str, **metrics) -> None:
    """Add to an adapter's ``metrics`` in the server's own database (its SQLite file), as the
    worker's storing transaction does."""
    database = server.log.parent / "data" / "clipfit.sqlite3"
    assert database.exists()
    engine = make_engine(f"sqlite:///{database}", pooled=False)
    try:
        with Session(engine) as s, s.begin():
            row = s.get(Adapter, adapter_id)
            row.metrics = {**row.metrics, **metrics}
    finally:
        engine.dispose()


def open_version(page, adapter: dict) -> None:
    page.goto(f"/#/adapters/{adapter['id']}")
    expect(page.locator("h1")).to_have_text(adapter["name"] or "Adapter")


@pytest.fixture
def lineage(server, tiny) -> list[dict]:
    """Versions 1 and 2 of a name of their own, imported (no training)."""
    name = f"loop-{uuid.uuid4().hex[:8]}"
    versions = [imported(server, tiny, name, seed) for seed in (1, 2)]
    assert [v["version"] for v in versions] == [1, 2]
    return versions


@pytest.fixture
def trained(server, colour_set) -> dict:
    """Version 1 of a name of its own, trained on this server (2 epochs of clipfit-tiny)."""
    files, labels = image_files(colour_set)
    r = server.client.post("/v1/jobs", files=files, data={
        **TRAIN, "labels": labels, "name": f"trained-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 202, r.text
    job = wait_for(server.client, r.json()["id"], lambda j: j["status"] in FINISHED, 180)
    assert job["status"] == "succeeded", job
    return server.client.get(f"/v1/adapters/{job['adapter_id']}").json()


def test_retrain_from_labelled_captures_then_its_comparison(page, key, server, trained,
                                                             shots):
    name, ref = trained["name"], f"{trained['name']}@1"
    retrain = f"/v1/adapters/{ref}/retrain"
    before = job_ids(server)
    sign_in(page, key)
    open_adapter(page, trained)
    button, error = page.locator("#retrain"), page.locator("#retrain-status .error-box")
    expect(button).to_have_text("Retrain from 0 labelled captures")
    baseline = server.client.get(f"/v1/adapters/{ref}/stats").json()["versions"][0]["baseline"]
    assert baseline["low_confidence_share"] is not None  # a version trained here has one
    expect(page.locator("#served-baseline")).to_contain_text(
        f"{pct(baseline['low_confidence_share'])} of low confidence")

    button.click()  # nothing labelled: the API's 409, in its words
    refusal = server.client.post(retrain, json={})
    assert refusal.status_code == 409, refusal.text
    assert refusal.json()["message"].startswith("no new labelled captures for")
    expect(error.locator("b")).to_have_text(sentence(refusal.json()["message"]))
    assert job_ids(server) == before

    # captures labelled through the API: 6 labelled, 1 discarded, 1 left pending
    assert server.client.put(f"/v1/adapters/{ref}/capture",
                             json={"sample_rate": 1.0}).status_code == 200
    r = server.client.post("/v1/classify", data={"adapter": ref}, files=unique_files(0, 8))
    assert r.status_code == 200, r.text
    kept = captured(server, trained["id"], 8)
    assert len(kept) == 8
    for i, capture in enumerate(kept[:7]):
        verdict = {"discard": True} if i == 6 else {"label": trained["classnames"][i % 4]}
        r = server.client.post(f"/v1/adapters/{ref}/captures/{capture['id']}", json=verdict)
        assert r.status_code == 200, r.text
    page.reload()
    expect(button).to_have_text("Retrain from 6 labelled captures")
    expect(page.locator("#retrain-waiting")).to_contain_text(f"6 labelled captures of {name} "
                                                             "wait")

    page.check("#retrain-promote-auto")
    page.fill("#retrain-alias", "Prod")
    button.click()  # every problem of the body, as the API lists them
    invalid = server.client.post(retrain, json={"promote": "auto", "alias": "Prod"})
    assert invalid.status_code == 422, invalid.text
    expect(error.locator("b")).to_have_text(sentence(invalid.json()["message"]))
    expect(error.locator(".problems li")).to_have_text(invalid.json()["problems"])
    assert any(p.startswith("alias: 'Prod' is not an alias") for p in invalid.json()["problems"])
    assert job_ids(server) == before

    r = server.client.put("/v1/aliases/production", json={"name": name, "version": 1})
    assert r.status_code == 200, r.text
    page.fill("#retrain-alias", "")
    button.click()
    expect(page).to_have_url(re.compile(r"#/jobs/\w+$"))
    job_id = page.url.rsplit("/", 1)[1]
    job = server.client.get(f"/v1/jobs/{job_id}").json()
    assert job_ids(server) == [job_id, *before]
    assert (job["parent_adapter_id"], job["name"]) == (trained["id"], name)
    assert {k: job["retrain"][k] for k in ("promote", "alias", "added", "benchmarked")} == {
        "promote": "auto", "alias": None, "added": 5, "benchmarked": 1}
    expect(page.locator("dl.facts")).to_contain_text(
        "retrain5 captures added, 1 to the benchmark set")
    snap(page, shots / "retrain-job.png")

    # the worker trains the version, compares it on the benchmark set and promotes it
    expect(page.locator("#job-status [data-status]")).to_have_text("succeeded",
                                                                   timeout=240_000)
    page.click("#adapter-link")
    expect(page.locator("h1")).to_have_text(name)
    v2 = server.client.get(f"/v1/jobs/{job_id}").json()["adapter_id"]
    comparison = server.client.get(f"/v1/adapters/{v2}").json()["metrics"]["comparison"]
    assert "error" not in comparison, comparison
    expect(page.locator("#cmp-candidate")).to_have_text(pct(comparison["candidate"]["accuracy"]))
    expect(page.locator("#cmp-previous")).to_have_text(pct(comparison["previous"]["accuracy"]))
    expect(page.locator("#cmp-zero")).to_have_text(pct(comparison["zero_shot"]["accuracy"]))
    expect(page.locator("#cmp-difference")).to_have_text(
        f"{points(comparison['vs_previous']['difference'])} points")
    expect(page.locator("#comparison-classes tbody tr")).to_have_count(
        len(comparison["per_class"]))
    promotion = comparison["promotion"]
    moved = ["production"] if comparison["not_worse"] else []
    assert (promotion["promote"], promotion["moved_aliases"]) == ("auto", moved)
    expect(page.locator("#cmp-promotion")).to_contain_text(sentence(promotion["decision"]))
    aliases = server.client.get("/v1/aliases", params={"name": name}).json()["data"]
    assert [(a["alias"], a["version"]) for a in aliases] == [("production", 2 if moved else 1)]
    expect(page.locator('#aliases tr[data-alias="production"] td').nth(1)).to_have_text(
        "this version" if moved else "v1")
    snap(page, shots / "retrained.png")

    page.click("#cmp-previous + span a")  # the captures it took wait no more
    expect(page.locator("#comparison")).to_have_count(0)
    expect(button).to_have_text("Retrain from 0 labelled captures")


def test_retrain_of_an_unnamed_adapter_is_refused_in_the_apis_words(page, key, server, tiny):
    adapter = imported(server, tiny, None, 5)
    sign_in(page, key)
    open_version(page, adapter)
    expect(page.locator("#retrain-alias")).to_be_disabled()
    expect(page.locator("#promote")).to_contain_text("This adapter has no name")
    page.click("#retrain")
    refusal = server.client.post(f"/v1/adapters/{adapter['id']}/retrain")
    assert refusal.status_code == 409 and "has no name" in refusal.json()["message"]
    expect(page.locator("#retrain-status .error-box b")).to_have_text(
        sentence(refusal.json()["message"]))


def stored_comparison(previous_id: str) -> dict:
    """What worker/promotion.py stores for a version compared on 20 benchmark images (5 per
    class; 2 more of a class it lacks left out), promoted automatically."""
    labels = torch.tensor([i // 5 for i in range(20)])

    def answers(wrong: dict[int, int]) -> torch.Tensor:
        predicted = labels.clone()
        for image, answer in wrong.items():
            predicted[image] = answer
        return torch.nn.functional.one_hot(predicted, len(CLASSES)).float()

    report = version_comparison(answers({5: 2, 10: 3}), answers({0: 1, 5: 0, 6: 3, 15: 2}),
                                answers({i: (i // 5 + 1) % 4 for i in range(0, 20, 2)}),
                                labels, CLASSES)
    return {"previous_adapter_id": previous_id, "benchmark_images": 22,
            "excluded_images": 2} | report | {"promotion": {
                "promote": "auto", "decision": "promoted", "moved_aliases": ["production"]}}


def test_comparison_card_shows_a_stored_comparison_or_its_error(page, key, server, tiny,
                                                                 lineage, shots):
    v1, v2 = lineage
    comparison = stored_comparison(v1["id"])
    vs = comparison["vs_previous"]
    assert [comparison[k]["accuracy"] for k in ("candidate", "previous", "zero_shot")] == \
        [0.9, 0.8, 0.5]
    assert (vs["difference"], vs["only_new_right"], vs["only_old_right"]) == (0.1, 3, 1)
    store_metrics(server, v2["id"], comparison=comparison)
    v3 = imported(server, tiny, v1["name"], 3)
    gone = uuid.uuid4().hex
    store_metrics(server, v3["id"], comparison={
        "error": "the previous version was deleted before the comparison",
        "previous_adapter_id": gone, "not_worse": None, "promotion": {
            "promote": "auto", "moved_aliases": [],
            "decision": "not promoted: the previous version was deleted before the comparison"}})

    sign_in(page, key)
    open_version(page, v2)
    card = page.locator("#comparison")
    expect(card.locator("h2")).to_have_text("Compared with the previous version")
    expect(page.locator("#cmp-images")).to_contain_text(
        "Accuracy on 20 images of the name's benchmark set, which no version trained on (22 in "
        "the set; 2 of classes this version does not know left out)")
    expect(page.locator("#cmp-candidate")).to_have_text("90.0%")
    expect(page.locator("#cmp-previous")).to_have_text("80.0%")
    expect(page.locator("#cmp-previous + span a")).to_have_text("v1")
    expect(page.locator("#cmp-zero")).to_have_text("50.0%")
    expect(page.locator("#cmp-difference")).to_have_text("+10.0 points")
    expect(page.locator("#cmp-interval")).to_contain_text(
        f"This version minus v1: +10.0 points, 95% interval {points(vs['low'])} to "
        f"{points(vs['high'])} points (paired bootstrap over the images); 3 images only this "
        "version got right, 1 only v1.")
    zs = comparison["vs_zero_shot"]
    expect(page.locator("#cmp-interval")).to_contain_text(
        f"Against zero-shot: {points(zs['difference'])} points ({points(zs['low'])} to "
        f"{points(zs['high'])})")
    assert comparison["not_worse"] is True
    expect(page.locator("#cmp-verdict")).to_have_text(
        "Not worse than v1: not below it on the mean, or the interval reaches above zero.")
    expect(page.locator("#cmp-promotion")).to_have_text(
        "Promotion (auto): Promoted. Aliases moved here: production.")
    rows = page.locator("#comparison-classes tbody tr")
    expect(rows).to_have_count(4)
    for row in comparison["per_class"]:
        cells = page.locator(f'#comparison-classes tr[data-class="{row["class"]}"] td')
        expect(cells).to_have_text([row["class"], str(row["images"]),
                                    pct(row["candidate_recall"]), pct(row["previous_recall"]),
                                    pct(row["zero_shot_recall"]), points(row["change"])])
    blue = page.locator('#comparison-classes tr[data-class="blue"] td').last
    expect(blue).to_have_text("-20.0")
    expect(blue).to_have_class(re.compile(r"\bdown\b"))
    snap(page, shots / "comparison.png")

    page.click("#cmp-previous + span a")
    expect(page).to_have_url(re.compile(f"#/adapters/{v1['id']}$"))
    expect(page.locator("#acc-classes")).to_have_text("4")
    expect(card).to_have_count(0)  # version 1 was not compared with anything
    assert "null" not in page.inner_text("#view")  # nor is a missing card written out

    open_version(page, v3)
    expect(page.locator("#comparison-error")).to_have_text(
        "The comparison could not be made: The previous version was deleted before the "
        "comparison.")
    expect(card).to_contain_text("Previous version: the previous version (deleted).")
    expect(page.locator("#cmp-promotion")).to_have_text(
        "Promotion (auto): Not promoted: the previous version was deleted before the "
        "comparison. No alias moved.")
    expect(page.locator("#cmp-candidate")).to_have_count(0)


def test_promote_by_hand_points_an_alias_at_the_version(page, key, server, lineage):
    v1, v2 = lineage
    name = v1["name"]
    r = server.client.put("/v1/aliases/production", json={"name": name, "version": 1})
    assert r.status_code == 200, r.text

    def stored() -> list[tuple[str, int]]:
        answer = server.client.get("/v1/aliases", params={"name": name}).json()["data"]
        return sorted((a["alias"], a["version"]) for a in answer)

    sign_in(page, key)
    open_version(page, v2)
    rows = page.locator("#aliases tbody tr")
    expect(rows).to_have_count(1)
    production = page.locator('#aliases tr[data-alias="production"] td')
    expect(production).to_have_text([f"{name}@production", "v1", re.compile("ago|just now")])
    expect(page.locator("#promote-alias")).to_have_value("production")

    page.fill("#promote-alias", "Prod")
    page.click("#promote-button")
    invalid = server.client.put("/v1/aliases/Prod", json={"name": name, "version": 2})
    assert invalid.status_code == 422, invalid.text
    error = page.locator("#promote-status .error-box")
    expect(error.locator("b")).to_have_text(sentence(invalid.json()["message"]))
    expect(error.locator(".problems li")).to_have_text(invalid.json()["problems"])
    assert stored() == [("production", 1)]

    page.fill("#promote-alias", "production")
    page.click("#promote-button")
    expect(page.locator("#promote-status .ok-box")).to_have_text(
        f"{name}@production points at v2 now: requests naming it are answered by this "
        "version from the next one on.")
    expect(production.nth(1)).to_have_text("this version")
    assert stored() == [("production", 2)]
    r = server.client.post("/v1/classify", data={"adapter": f"{name}@production"},
                           files=unique_files(100, 1))
    assert r.status_code == 200 and r.json()["adapter_id"] == v2["id"], r.text

    page.fill("#promote-alias", "staging")  # a new alias is made
    page.click("#promote-button")
    expect(rows).to_have_count(2)
    assert stored() == [("production", 2), ("staging", 2)]
    open_version(page, v1)
    expect(page.locator('#aliases tr[data-alias="production"] td').nth(1)).to_have_text("v2")


def served_stats(server, adapter_id: str, predictions: int) -> dict:
    """The adapter's stats once ``predictions`` answers are counted in the database (each API
    process adds its counts every 15 s)."""
    deadline = time.monotonic() + 45
    while True:
        stats = server.client.get(f"/v1/adapters/{adapter_id}/stats",
                                  params={"hours": 24}).json()
        if stats["versions"][0]["totals"]["predictions"] >= predictions \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def test_what_it_serves_is_charted_per_hour_and_nothing_is_said(page, key, server, tiny,
                                                                  shots):
    busy = imported(server, tiny, f"served-{uuid.uuid4().hex[:8]}", 6)
    idle = imported(server, tiny, f"idle-{uuid.uuid4().hex[:8]}", 7)
    r = server.client.put(f"/v1/adapters/{busy['id']}/capture", json={"unknown": True})
    assert r.status_code == 200, r.text
    for start, threshold in ((200, "0.99"), (210, "0.0")):  # "unknown" below 0.99, then none
        r = server.client.post("/v1/classify", data={"adapter": busy["id"],
                                                     "threshold": threshold},
                               files=unique_files(start, 5))
        assert r.status_code == 200, r.text
    stats = served_stats(server, busy["id"], 10)
    version = stats["versions"][0]
    totals, hours = version["totals"], version["hours"]
    assert totals["predictions"] == 10 and totals["unknown"] == totals["captured"] == 5

    sign_in(page, key)
    open_version(page, busy)
    bars = page.locator("#served-chart rect.hour")
    expect(bars).to_have_count(len(hours))
    busiest = max(h["predictions"] for h in hours)
    since = stats["since"]
    for hour in hours:
        bar = page.locator(f'#served-chart rect.hour[data-hour="{hour["hour"]}"]')
        assert bar.get_attribute("data-predictions") == str(hour["predictions"])
        assert float(bar.get_attribute("height")) == pytest.approx(
            100 * hour["predictions"] / busiest)
        expect(bar.locator("title")).to_contain_text(
            f"{hour['predictions']} answers; \"unknown\" {pct(hour['unknown_share'])}, low "
            f"confidence {pct(hour['low_confidence_share'])}, captured "
            f"{pct(hour['captured_share'])}")
    for series in ("unknown", "low_confidence", "captured"):
        lines = page.locator(f"#served-chart polyline[data-series={series}]")
        drawn = [tuple(map(float, p.split(","))) for i in range(lines.count())
                 for p in lines.nth(i).get_attribute("points").split()]
        wanted = []
        for hour in hours:  # a step across each hour, at its share (100 is 0%, 0 is 100%)
            slot = round((datetime.fromisoformat(hour["hour"])
                          - datetime.fromisoformat(since)).total_seconds() / 3600)
            y = 100 - 100 * hour[f"{series}_share"]
            wanted += [(10 * slot, pytest.approx(y, abs=0.01)),
                       (10 * slot + 10, pytest.approx(y, abs=0.01))]
        assert drawn == wanted, series
    expect(page.locator("#served-totals")).to_have_text(
        f"10 answers in the last 24 hours: {pct(totals['unknown_share'])} \"unknown\" (5), "
        f"{pct(totals['low_confidence_share'])} of low confidence, below 50.0% "
        f"({totals['low_confidence']}), 50.0% captured for review (5).")
    expect(page.locator("#served-baseline")).to_have_text(
        "No held-out baseline to compare with (no held-out split, or none stored with this "
        "version).")
    expect(page.locator("#served-empty")).to_have_count(0)
    snap(page, shots / "served.png")
    page.set_viewport_size(web.PHONE)  # the chart and the new cards fit a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= web.PHONE["width"]
    snap(page, shots / "served-phone.png")
    page.set_viewport_size(web.LAPTOP)

    open_version(page, idle)
    expect(page.locator("#served-empty")).to_have_text(
        "Nothing served in the last 24 hours. Every answer this version gives is counted "
        "here, per hour (within 15 s).")
    expect(page.locator("#served-chart")).to_have_count(0)
