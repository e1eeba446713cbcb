"""Capture and review on the web page, in a real browser against a real ``clipfit serve``
(test_web_page's server, browser and page): capture turned on through the adapter page's
form (bad values refused with the API's words), images classified through the API, then
reviewed with the keys (a number labels, ``x`` discards, a typed class is a new class) and
every verdict read back through the API. Adapters are brought in by import: no training."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from . import test_web_page as web
from .test_aliases import _delta_zip
from .test_web_page import expect, sign_in, snap

# test_web_page's fixtures: a module-scoped ``clipfit serve`` and browser of this module's own
browser, page, server, shots = web.browser, web.page, web.server, web.shots

CLASSES = ["red", "green", "blue", "yellow"]
SELECTED = re.compile(r"\bselected\b")


@pytest.fixture
def adapter(server, tiny) -> dict:
    """A named adapter of its own, so that its lineage starts with no captures."""
    r = server.client.post("/v1/adapters", data={"name": f"review-{uuid.uuid4().hex[:8]}"},
                           files={"file": ("d.zip", _delta_zip(tiny, 3, CLASSES))})
    assert r.status_code == 201, r.text
    return r.json()


def classify(server, adapter_id: str, paths) -> None:
    files = [("images", (f"{p.parent.name}-{p.name}", p.read_bytes(), "image/png"))
             for p in paths]
    r = server.client.post("/v1/classify", data={"adapter": adapter_id}, files=files)
    assert r.status_code == 200, r.text


def captured(server, adapter_id: str, count: int) -> list[dict]:
    """The lineage's pending captures, once ``count`` are written (the writer works after
    classify has answered)."""
    deadline = time.monotonic() + 30
    while True:
        r = server.client.get(f"/v1/adapters/{adapter_id}/captures",
                              params={"state": "pending", "limit": 200})
        assert r.status_code == 200, r.text
        if len(r.json()["data"]) >= count or time.monotonic() > deadline:
            return r.json()["data"]
        time.sleep(0.1)


def open_adapter(page, adapter: dict) -> None:
    page.click("nav >> text=Adapters")
    page.click(f'#adapters [data-adapter="{adapter["id"]}"] a')
    expect(page.locator("h1")).to_have_text(adapter["name"])


def test_capture_is_set_from_the_page_and_refused_values_are_named(page, key, server,
                                                                     adapter, shots):
    settings = f"/v1/adapters/{adapter['id']}/capture"
    sign_in(page, key)
    open_adapter(page, adapter)
    expect(page.locator("#capture-summary")).to_have_text(re.compile("^Off"))
    expect(page.locator("#capture-off")).to_be_hidden()

    page.fill("#capture-sample_rate", "1.5")
    page.fill("#capture-below_confidence", "2")
    page.click("#capture-save")
    error = page.locator("#capture-status .error-box")
    expect(error).to_contain_text("Invalid capture settings")
    expect(error.locator(".problems li")).to_have_text([
        "sample_rate: must be between 0 and 1, not 1.5",
        "below_confidence: must be between 0 and 1, not 2.0"])
    assert server.client.get(settings).json()["enabled"] is False  # nothing stored

    page.fill("#capture-sample_rate", "")
    page.fill("#capture-below_confidence", "")
    page.click("#capture-save")  # no rule at all
    expect(error).to_contain_text("no rule can fire")

    page.fill("#capture-below_confidence", "0.6")
    page.check("#capture-unknown")
    page.click("#capture-classes summary")
    page.check("#capture-classes >> text=green")
    page.fill("#capture-max_per_day", "500")
    page.fill("#capture-retention_days", "7")
    page.click("#capture-save")
    summary = page.locator("#capture-summary")
    expect(summary).to_contain_text("On: keeps answers of \"unknown\"; answers below 60.0% "
                                    "confidence; answers of green")
    expect(summary).to_contain_text("at most 500 a day, each kept 7 days")
    stored = server.client.get(settings).json()
    assert {k: stored[k] for k in ("enabled", "unknown", "below_confidence", "classes",
                                   "sample_rate", "alias", "max_per_hour", "max_per_day",
                                   "retention_days")} == {
        "enabled": True, "unknown": True, "below_confidence": 0.6, "classes": ["green"],
        "sample_rate": None, "alias": None, "max_per_hour": None, "max_per_day": 500,
        "retention_days": 7}

    snap(page, shots / "capture.png")
    page.reload()  # the form shows what is stored
    expect(page.locator("#capture-below_confidence")).to_have_value("0.6")
    expect(page.locator("#capture-unknown")).to_be_checked()
    expect(page.locator("#capture-classes input[value=green]")).to_be_checked()
    page.click("#capture-off")
    expect(summary).to_have_text(re.compile("^Off"))
    assert server.client.get(settings).json()["enabled"] is False
    expect(page.locator("#capture-save")).to_have_text("Turn on")
    expect(page.locator("#capture-max_per_day")).to_have_value("500")  # kept for turning on


def test_review_with_number_keys_x_and_a_new_class(page, key, server, adapter,
                                                   colour_set, shots):
    ref = f"{adapter['name']}@{adapter['version']}"
    r = server.client.put(f"/v1/adapters/{ref}/capture", json={"sample_rate": 1.0})
    assert r.status_code == 200, r.text
    classify(server, ref, [colour_set / c / "0001.png" for c in CLASSES])
    kept = {c["id"]: c for c in captured(server, adapter["id"], 4)}
    assert len(kept) == 4

    sign_in(page, key)
    open_adapter(page, adapter)
    page.click("#review-link")
    expect(page.locator("#pending-count")).to_have_text("4 pending")
    tiles = page.locator("#captures .capture")
    expect(tiles).to_have_count(4)
    expect(page.locator("#captures .capture img[src^='blob:']")).to_have_count(4)
    ids = [tiles.nth(i).get_attribute("data-capture") for i in range(4)]
    assert sorted(ids) == sorted(kept)
    for tile, capture in zip([tiles.nth(i) for i in range(4)], (kept[i] for i in ids)):
        expect(tile.locator(".answer")).to_have_text(capture["predicted"])
        expect(tile.locator(".confidence")).to_have_text(f"{100 * capture['confidence']:.1f}%")
        expect(tile.locator(".rule")).to_have_text("sample_rate")
        expect(tile.locator(".choice")).to_have_text(
            [re.compile(rf"^{n}{t['label']}") for n, t in enumerate(capture["top_k"], 1)])
    snap(page, shots / "review.png")

    def tile(i: int):
        return page.locator(f'#captures [data-capture="{ids[i]}"]')

    tile(1).locator("img").click()
    expect(tile(1)).to_have_class(SELECTED)
    page.keyboard.press("ArrowLeft")
    expect(tile(0)).to_have_class(SELECTED)
    page.keyboard.press("2")  # the capture's second class, as numbered on its tile
    expect(tile(0)).to_have_count(0)
    expect(page.locator("#pending-count")).to_have_text("3 pending")
    expect(tile(1)).to_have_class(SELECTED)
    page.keyboard.press("x")
    expect(tile(1)).to_have_count(0)
    expect(tile(2)).to_have_class(SELECTED)
    page.keyboard.press("j")
    expect(tile(3)).to_have_class(SELECTED)
    page.keyboard.press("o")
    other = page.locator("#other-class")
    expect(other).to_be_focused()
    page.keyboard.type("box 1")  # "x" and "1" are text here, not shortcuts
    expect(other).to_have_value("box 1")
    expect(tiles).to_have_count(2)
    expect(page.locator("#pending-count")).to_have_text("2 pending")
    page.keyboard.press("Enter")
    expect(tile(3)).to_have_count(0)
    expect(page.locator("#pending-count")).to_have_text("1 pending")
    expect(tile(2)).to_have_class(SELECTED)
    expect(other).to_have_value("")

    def stored(i: int) -> dict:
        r = server.client.get(f"/v1/adapters/{ref}/captures/{ids[i]}")
        assert r.status_code == 200, r.text
        return r.json()

    second_class = kept[ids[0]]["top_k"][1]["label"]
    assert [(c["state"], c["label"], c["new_class"]) for c in map(stored, range(4))] == [
        ("labelled", second_class, False), ("discarded", None, False),
        ("pending", None, False), ("labelled", "box 1", True)]

    page.select_option("#review-state", "labelled")  # reviewed tiles show their new state
    expect(tiles).to_have_count(2)
    expect(tile(3).locator(".verdict")).to_have_text("labelled box 1 (a new class)")
    tile(3).locator("img").click()
    page.keyboard.press("1")
    first_class = kept[ids[3]]["top_k"][0]["label"]
    expect(tile(3).locator(".verdict")).to_have_text(f"labelled {first_class}")
    assert (stored(3)["label"], stored(3)["new_class"]) == (first_class, False)
    expect(page.locator("#pending-count")).to_have_text("1 pending")
    page.select_option("#review-state", "discarded")
    expect(tiles).to_have_count(1)
    expect(tile(1).locator(".verdict")).to_have_text("discarded")


def test_load_more_follows_the_cursor_and_empty_is_said(page, key, server, adapter,
                                                        colour_set):
    sign_in(page, key)
    open_adapter(page, adapter)
    page.click("#review-link")
    expect(page.locator("#captures-empty")).to_contain_text("Nothing to review")
    expect(page.locator("#pending-count")).to_have_text("0 pending")

    r = server.client.put(f"/v1/adapters/{adapter['id']}/capture", json={"sample_rate": 1.0})
    assert r.status_code == 200, r.text
    classify(server, adapter["id"], sorted(colour_set.rglob("*.png"))[:55])
    kept = captured(server, adapter["id"], 55)
    assert len(kept) == 55
    page.reload()
    tiles = page.locator("#captures .capture")
    expect(tiles).to_have_count(50)
    expect(page.locator("#pending-count")).to_have_text("55 pending")
    page.click("#load-more")
    expect(tiles).to_have_count(55)
    expect(page.locator("#load-more")).to_be_hidden()
    assert [tiles.nth(i).get_attribute("data-capture") for i in range(55)] == \
        [c["id"] for c in kept]  # newest first, each once
