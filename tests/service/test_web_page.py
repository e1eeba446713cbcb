"""The web page at ``/`` in a real browser: Debian's chromium (installed by this test's setup
when missing) driven by Playwright, against a real ``clipfit serve`` (SQLite + in-process
worker, clipfit-tiny). Screenshots go to ``$CLIPFIT_SCREENSHOTS`` (README's come from there)
or to pytest's temporary directory."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.debian import debian_binary

from .test_aliases import _delta_zip
from .test_embedded import Server, free_port

playwright_api = pytest.importorskip("playwright.sync_api")  # a dev dependency: always there
expect = playwright_api.expect
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def debian_chromium() -> str:
    """Debian's chromium (Playwright's own browser download needs the internet)."""
    return debian_binary("chromium", "chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    # clipfit-mini is allowed but its weights are not installed: its jobs fail
    server = Server(root / "data", free_port(), root / "serve.log", env={
        "CLIPFIT_BASE_MODELS": "clipfit-tiny,clipfit-mini",
        "CLIPFIT_WEIGHTS_DIR": str(root / "no-weights")})
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("CLIPFIT_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=debian_chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=LAPTOP, base_url=str(server.client.base_url),
                                  accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    # the page's own script never throws, and nothing it does is refused by its CSP
    # (failed requests the test provokes on purpose are logged as 4xx resources; allowed)
    assert [e for e in errors if "status of 4" not in e] == []


def snap(page, path: Path) -> None:
    """A full-page screenshot from the top (the sticky header stays where it belongs)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=True)


def sign_in(page, key: str) -> None:
    page.goto("/")
    page.fill("#api-key", key)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Jobs")


def test_page_is_served_with_a_strict_policy(server):
    r = server.client.get("/", headers={"Authorization": ""})
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = server.client.get("/static/app.js", headers={"Authorization": ""})
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert server.client.get("/static/../registry/settings.py").status_code == 404
    models = server.client.get("/v1/models").json()
    assert models["data"] == [{"id": "clipfit-tiny", "default": True},
                              {"id": "clipfit-mini", "default": False}]
    assert "default" in models["templates"] and models["limits"]["max_epochs"] >= 1
    assert httpx_status(server, "/v1/models") == 401  # the catalogue needs a key


def httpx_status(server, path: str) -> int:
    return httpx.get(f"{server.client.base_url}{path}").status_code


def test_sign_in_train_from_a_folder_watch_and_try(page, key, colour_set, shots, tmp_path):
    page.goto("/")
    page.fill("#api-key", "cfk_not-a-real-key")
    page.click("button[type=submit]")
    expect(page.locator(".error-box")).to_contain_text("Unknown or revoked API key")
    sign_in(page, key)
    expect(page.locator("#jobs")).to_contain_text("No jobs yet")

    page.click("nav >> text=New job")
    expect(page.locator("#hp-epochs")).to_have_value("10")  # the schema's default
    assert page.get_attribute("#hp-epochs", "min") == "1"
    page.set_input_files("#folder-input", str(colour_set))
    classes = page.locator("#classes tbody tr")
    expect(classes).to_have_count(4)
    expect(page.locator("#classes")).to_contain_text("red")
    assert classes.nth(0).locator("td").nth(1).inner_text() == "16"
    page.fill("#job-name", "colours from the page")
    page.fill("#hp-epochs", "40")
    page.click("summary")
    page.fill("#hp-lr", "0.1")
    page.fill("#hp-batch_size", "16")
    page.fill("#hp-val_fraction", "0.25")
    snap(page, shots / "new-job.png")
    page.click("#submit-job")

    expect(page).to_have_url(re.compile(r"#/jobs/\w+$"), timeout=60_000)
    expect(page.locator("#job-status [data-status]")).to_have_text("running", timeout=60_000)
    expect(page.locator("#stat-epoch")).to_contain_text("/ 40", timeout=60_000)
    snap(page, shots / "job-running.png")
    expect(page.locator("#job-status [data-status]")).to_have_text("succeeded",
                                                                   timeout=180_000)
    expect(page.locator("#stat-epoch")).to_have_text("40 / 40")
    points = page.get_attribute("#loss-curve polyline", "points")
    assert points and len(points.split()) >= 2  # a curve, drawn from the streamed events
    expect(page.locator("#job-accuracy")).to_contain_text("tuned")
    snap(page, shots / "job-succeeded.png")

    page.click("#adapter-link")
    expect(page.locator("h1")).to_have_text("colours from the page")
    tuned = float(page.inner_text("#acc-tuned").rstrip("%"))
    assert tuned >= 75.0
    assert page.inner_text("#acc-zero").endswith("%")
    # the evaluation report: per class, zero-shot vs tuned, and the calibration
    expect(page.locator("#evaluation tbody tr")).to_have_count(4)
    expect(page.locator("#calibration")).to_contain_text("temperature")
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "adapter.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as z:
        assert sorted(z.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    snap(page, shots / "adapter.png")

    page.click("text=Try it >> nth=-1")
    page.set_input_files("#try-images", [str(colour_set / "red" / "0003.png"),
                                         str(colour_set / "blue" / "0001.png")])
    page.click("#classify")
    results = page.locator("#results .result")
    expect(results).to_have_count(2)
    expect(results.nth(0).locator(".top")).to_have_text("red")
    expect(results.nth(1).locator(".top")).to_have_text("blue")
    expect(results.nth(0).locator(".bar-row")).to_have_count(4)
    expect(page.locator("#zero-classes")).to_be_hidden()
    snap(page, shots / "try-it.png")
    page.check("#reject-unknown")  # the adapter's threshold: known colours pass it
    page.click("#classify")
    expect(results.nth(0).locator(".top")).to_have_text("red")

    page.check("#use-zero-shot")  # zero-shot with typed class names
    page.fill("#zero-classes", "red, green")
    page.click("#classify")
    expect(results.nth(0).locator(".bar-row")).to_have_count(2)
    labels = results.nth(0).locator(".bar-row .fill span").all_inner_texts()
    assert sorted(labels) == ["green", "red"]

    page.click("nav >> text=Adapters")
    page.click("#adapters >> text=colours from the page")
    page.once("dialog", lambda dialog: dialog.accept())  # "Delete adapter ...?"
    page.click("#delete")
    expect(page.locator("#adapters")).to_contain_text("No adapters yet")

    page.set_viewport_size(PHONE)
    page.click("nav >> text=Jobs")
    expect(page.locator("#jobs [data-status]")).to_have_text(["succeeded"])
    snap(page, shots / "phone-jobs.png")
    nav_box = page.locator("nav").bounding_box()
    assert nav_box["x"] + nav_box["width"] <= PHONE["width"]  # nothing runs off a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_a_zip_is_previewed_and_sent_as_the_dataset(page, key, colour_set, tmp_path):
    archive = tmp_path / "colours.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(colour_set.rglob("*.png")):
            z.write(path, "colours/" + path.relative_to(colour_set).as_posix())
        z.writestr("colours/.DS_Store", b"junk a Mac leaves behind")
    sign_in(page, key)
    page.click("nav >> text=New job")
    page.set_input_files("#zip-input", str(archive))
    expect(page.locator("#classes tbody tr")).to_have_count(4)
    expect(page.locator('tr[data-class="yellow"] td.num')).to_have_text("16")
    page.fill("#job-name", "from a zip")
    page.check("#hp-epochs-auto")  # the service picks epochs and lr (README's rule)
    page.click("summary")
    page.check("#hp-lr-auto")
    page.click("#submit-job")
    expect(page.locator("h1")).to_have_text("from a zip", timeout=60_000)
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("epochs30")  # clipfit-tiny: the replication's recipe
    expect(facts).to_contain_text("lr0.1")
    expect(facts).to_contain_text("autoepochs,lr")
    expect(page.locator("#job-status [data-status]")).to_have_text("succeeded",
                                                                   timeout=120_000)


def test_refused_upload_shows_each_problem_next_to_its_file(page, key, colour_set, tmp_path,
                                                            server):
    folder = tmp_path / "set"
    shutil.copytree(colour_set, folder)
    (folder / "green" / "broken.png").write_bytes(b"not an image at all")
    (folder / "red" / "also-broken.png").write_bytes(b"\x89PNG but cut short")
    (folder / "green" / "notes.txt").write_text("not an image: left out, as the server would")
    before = server.client.get("/v1/jobs").json()["data"]
    sign_in(page, key)
    page.click("nav >> text=New job")
    page.set_input_files("#folder-input", str(folder))
    expect(page.locator("#classes tbody tr")).to_have_count(4)
    expect(page.locator("#preview")).to_contain_text("1 file(s) that are not images")
    page.fill("#hp-epochs", "3")
    page.click("#submit-job")
    expect(page.locator("#submit-status .error-box")).to_contain_text("2 problem(s)")
    broken = page.locator('[data-file="green/broken.png"]')
    expect(broken).to_contain_text("green/broken.png")
    expect(page.locator('tr[data-class="green"] .problem')).to_have_count(1)
    expect(page.locator('tr[data-class="red"] [data-file="red/also-broken.png"]'))\
        .to_have_count(1)
    expect(page.locator('tr[data-class="blue"] .problem')).to_have_count(0)
    snap(page, Path(os.environ.get("CLIPFIT_SCREENSHOTS", tmp_path))
                    / "refused-upload.png")
    assert server.client.get("/v1/jobs").json()["data"] == before  # nothing was stored


def test_cancel_and_a_failed_job_in_plain_words(page, key, colour_set, server):
    sign_in(page, key)
    page.click("nav >> text=New job")
    page.set_input_files("#folder-input", str(colour_set))
    page.fill("#hp-epochs", "200")
    page.click("#submit-job")
    expect(page.locator("#stat-epoch")).to_contain_text("/ 200", timeout=60_000)
    page.click("#cancel-job")
    expect(page.locator("#job-status [data-status]")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#outcome")).to_contain_text("cancelled")
    expect(page.locator("#cancel-job")).to_be_hidden()

    page.click("nav >> text=New job")
    page.set_input_files("#folder-input", str(colour_set))
    page.select_option("#base-model", "clipfit-mini")
    page.fill("#hp-epochs", "2")
    page.click("#submit-job")
    expect(page.locator("#job-status [data-status]")).to_have_text("failed", timeout=60_000)
    error = page.locator("#job-error")
    expect(error).to_contain_text("Training failed. The weights of base model 'clipfit-mini' "
                                  "could not be loaded on the worker")
    assert "no-weights" not in error.inner_text()  # no server path reaches the page
    snap(page, Path(os.environ.get("CLIPFIT_SCREENSHOTS", server.log.parent))
                    / "job-failed.png")


COLOURS = ("blue", "green", "red", "yellow")


def test_batch_prediction_of_a_zip_followed_and_downloaded(page, key, server, tiny,
                                                           colour_set, shots, tmp_path):
    """Batch predictions: a zip submitted for an adapter, its progress followed, its
    results downloaded."""
    r = server.client.post("/v1/adapters", data={"name": "page-batch"}, files={
        "file": ("d.zip", _delta_zip(tiny, 3, list(COLOURS)), "application/zip")})
    assert r.status_code == 201, r.text
    names = [f"{c}/{p.name}" for c in COLOURS for p in sorted((colour_set / c).iterdir())[:3]]
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in names:
            z.write(colour_set / name, f"photos/{name}")

    sign_in(page, key)
    page.click("nav >> text=Batch")
    expect(page.locator("h1")).to_have_text("Batch predictions")
    expect(page.locator("#predict-adapter")).to_contain_text("page-batch@1")
    page.click("#predict-submit")  # nothing chosen: said so, nothing sent
    expect(page.locator("#predict-status")).to_contain_text("Choose a zip of images")
    page.set_input_files("#predict-zip", str(archive))
    page.click("#predict-submit")
    expect(page.locator("#predict-status")).to_contain_text("12 images")
    row = page.locator("#predictions tr").first
    expect(row).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(row.locator(".progress")).to_have_text("12 / 12")
    snap(page, shots / "batch-predictions.png")

    with page.expect_download() as download:
        row.locator("button[data-format=jsonl]").click()
    lines = [json.loads(line) for line in
             Path(download.value.path()).read_text(encoding="utf-8").splitlines()]
    assert [line["name"] for line in lines] == sorted(f"photos/{n}" for n in names)
    assert all(line["label"] in COLOURS and len(line["top_k"]) == 4 for line in lines)
    with page.expect_download() as download:
        row.locator("button[data-format=csv]").click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert text.startswith("name,sha256,label,unknown,error,label_1,prob_1")
    assert len(io.StringIO(text).readlines()) == 13
    assert download.value.suggested_filename.endswith(".csv")
