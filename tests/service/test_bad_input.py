"""A corpus of hostile and malformed requests: each answers one 4xx naming the problem, with
no internals (object reprs) and no long echo of what was sent, and stores nothing."""

from __future__ import annotations

import io
import zipfile

import pytest
from sqlalchemy import func, select

from registry.models import Adapter, Blob, Dataset, DatasetImage, Job, JobEvent

from .conftest import image_files

TABLES = (Job, JobEvent, Dataset, DatasetImage, Blob, Adapter)
TRAIN = {"base_model": "clipfit-tiny", "epochs": "2"}


def png(colour=(200, 10, 10), size=(9, 9)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


GOOD = {"cat/1.png": png((200, 0, 0)), "dog/1.png": png((0, 0, 200))}


def patched(raw: bytes, *, method: int | None = None, flag: int | None = None,
            corrupt: bytes | None = None) -> bytes:
    """Rewrite every member's compression method / flag bits in the local and central
    headers, or flip a byte of some member data."""
    data = bytearray(raw)
    for signature, method_at, flag_at in ((b"PK\x03\x04", 8, 6), (b"PK\x01\x02", 10, 8)):
        start = 0
        while (i := data.find(signature, start)) >= 0:
            if method is not None:
                data[i + method_at:i + method_at + 2] = method.to_bytes(2, "little")
            if flag is not None:
                data[i + flag_at] |= flag
            start = i + 4
    if corrupt is not None:
        i = data.find(corrupt)
        data[i + len(corrupt) // 2] ^= 0xFF
    return bytes(data)


def job_cases(colour_set) -> list[tuple[str, dict, str]]:
    files, labels = image_files(colour_set)
    few, few_labels = files[:4] + files[16:20], labels[:4] + labels[16:20]
    form = {**TRAIN, "labels": few_labels}
    deflated = make_zip({"cat/1.png": png() * 20, "dog/1.png": png((0, 0, 200)) * 20},
                        zipfile.ZIP_DEFLATED)
    macosx = {f"__MACOSX/._{i}.png": b"x" for i in range(150)} | GOOD
    manifest = "path,label\n" + "cat/1.png,cat\n" * 120 + "dog/1.png,dog\n"
    return [
        ("nested zip", {"files": {"dataset": ("d.zip", make_zip(
            GOOD | {"cat/more.zip": make_zip(GOOD)}))}, "data": TRAIN}, "archives inside"),
        ("empty label", {"files": few, "data": {**form, "labels": ["", *few_labels[1:]]}},
         "is empty"),
        ("10,000-character label", {"files": few, "data": {
            **form, "labels": ["x" * 10_000, *few_labels[1:]]}}, "the limit is 100"),
        ("lr=inf", {"files": few, "data": {**form, "lr": "inf"}}, "lr must be a finite"),
        ("lambda=inf", {"files": few, "data": {**form, "lambda": "inf"}}, "lambda must be"),
        ("lr=1e308", {"files": few, "data": {**form, "lr": "1e308"}}, "lr must be <= 10"),
        ("seed=10**30", {"files": few, "data": {**form, "seed": str(10**30)}},
         "seed must be <="),
        ("shots=0", {"files": few, "data": {**form, "shots": "0"}}, "shots must be >= 1"),
        ("shots=10**30", {"files": few, "data": {**form, "shots": str(10**30)}},
         "shots must be <="),
        ("val_fraction=0.99", {"files": few, "data": {**form, "val_fraction": "0.99"}},
         "val_fraction must be <= 0.5"),
        ("empty base_model", {"files": few, "data": {**form, "base_model": ""}},
         "base_model is empty"),
        ("format-string bomb", {"files": few, "data": {
            **form, "template": "{{}}{0:x>20000000}"}}, "exactly one '{}'"),
        ("named field", {"files": few, "data": {**form, "template": "{} {x}"}},
         "exactly one '{}'"),
        ("nested spec", {"files": few, "data": {**form, "template": "{:{}}"}},
         "exactly one '{}'"),
        ("too many classes", {"files": few, "data": {
            **form, "classes": ",".join(f"c{i}" for i in range(1001))}}, "the limit is 1000"),
        ("__MACOSX entries count", {"files": {"dataset": ("d.zip", make_zip(macosx))},
                                    "data": TRAIN, "limits": {"max_archive_members": 100}},
         "entries, the limit is 100"),
        ("manifest rows capped before reading", {
            "files": {"dataset": ("d.zip", make_zip(GOOD | {"manifest.csv": manifest.encode()}))},
            "data": TRAIN, "limits": {"max_images": 100}}, "rows, the limit is 100"),
        ("bad CRC", {"files": {"dataset": ("d.zip", patched(make_zip(GOOD),
                                                           corrupt=GOOD["cat/1.png"]))},
                     "data": TRAIN}, "cat/1.png': cannot be read"),
        ("corrupt deflate stream", {"files": {"dataset": ("d.zip", patched(
            deflated, corrupt=deflated[60:90]))}, "data": TRAIN}, "cannot be read"),
        ("encrypted member", {"files": {"dataset": ("d.zip", patched(make_zip(GOOD), flag=1))},
                              "data": TRAIN}, "encrypted members"),
        ("unknown compression", {"files": {"dataset": ("d.zip", patched(make_zip(GOOD),
                                                                        method=99))},
                                 "data": TRAIN}, "unsupported method"),
        ("not an image", {"files": [*few[:-1], ("images", ("x.png", b"junk", "image/png"))],
                          "data": form}, "x.png: not a readable image (unknown image format)"),
        ("truncated png", {"files": [*few[:-1], ("images", ("t.png", png()[:40], "image/png"))],
                           "data": form}, "t.png: not a readable image"),
        ("too many pixels", {"files": [*few[:-1], ("images", ("big.png", png(size=(400, 400)),
                                                              "image/png"))],
                             "data": form, "limits": {"max_image_pixels": 100_000}},
         "400x400 exceeds 100000 pixels"),
    ]


def classify_cases(red: bytes) -> list[tuple[str, dict, str]]:
    one = [("images", ("r.png", red, "image/png"))]
    zero_shot = {"base_model": "clipfit-tiny", "classes": "cat,dog"}
    return [
        ("format-string bomb", {"files": one, "data": {**zero_shot,
                                                       "template": "{{}}{0:x>20000000}"}},
         "exactly one '{}'"),
        ("named field", {"files": one, "data": {**zero_shot, "template": "{} {x}"}},
         "exactly one '{}'"),
        ("nested spec", {"files": one, "data": {**zero_shot, "template": "{:{}}"}},
         "exactly one '{}'"),
        ("superscript top_k", {"files": one, "data": {**zero_shot, "top_k": "²"}}, "top_k"),
        ("top_k=0", {"files": one, "data": {**zero_shot, "top_k": "0"}}, "top_k"),
        ("empty class", {"files": one, "data": {**zero_shot, "classes": "cat,,dog"}},
         "is empty"),
        ("duplicate class", {"files": one, "data": {**zero_shot, "classes": "cat,cat"}},
         "duplicate class names"),
        ("long class", {"files": one, "data": {**zero_shot, "classes": "a," + "b" * 5000}},
         "the limit is 100"),
        ("json garbage", {"content": b"{not json", "headers": {
            "content-type": "application/json"}}, "invalid classification request"),
        ("unknown adapter, 8 KB id", {"files": one, "data": {"adapter_id": "a" * 8000}},
         "not found"),
    ]


def counts(api) -> list[int]:
    with api.app.state.context.sessions() as s:
        return [s.scalar(select(func.count()).select_from(t)) for t in TABLES]


def check_refusal(r, fragment: str, name: str) -> None:
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:500])
    assert fragment in r.text, (name, fragment, r.text[:1000])
    assert " at 0x" not in r.text, (name, r.text[:500])  # no object reprs
    assert len(r.text) < 4000, (name, len(r.text))  # no long echo


def test_every_bad_request_is_one_clear_4xx_and_stores_nothing(api, colour_set, monkeypatch):
    before = counts(api)
    red = (colour_set / "red" / "0000.png").read_bytes()
    cases = [("POST /v1/jobs", c) for c in job_cases(colour_set)] + \
        [("POST /v1/classify", c) for c in classify_cases(red)]
    statuses = []
    for route, (name, request, fragment) in cases:
        with monkeypatch.context() as m:
            for key, value in request.pop("limits", {}).items():
                m.setattr(api.app.state.settings, key, value)
            r = api.post(route.split()[1], **request)
        statuses.append(r.status_code)
        check_refusal(r, fragment, f"{route}: {name}")
    for name, url, fragment in [
        ("cursor past 2^63", "/v1/jobs/x/events?cursor=" + str(2**64), "cursor"),
        ("8 KB job id", "/v1/jobs/" + "j" * 8000, "not found"),
        ("8 KB cursor", "/v1/jobs?cursor=" + "c" * 8000, "cursor: String should match"),
    ]:
        r = api.get(url)
        statuses.append(r.status_code)
        check_refusal(r, fragment, f"GET {name}")
    assert counts(api) == before  # not one row written by a refused request
    print(f"\nbad-input corpus: {len(statuses)} cases, "
          f"{sum(400 <= s < 500 for s in statuses)} 4xx, {sum(s >= 500 for s in statuses)} 5xx")


def test_the_body_limit_holds_for_chunked_bodies(api, colour_set, monkeypatch):
    monkeypatch.setattr(api.app.state.settings, "max_request_bytes", 6000)
    before = counts(api)
    body = make_zip({f"cat/{i}.png": png((i, 0, 0)) for i in range(60)}
                    | {f"dog/{i}.png": png((0, 0, i)) for i in range(60)})

    def chunks():  # no Content-Length: the server must count what it reads
        multipart = (b"--b\r\nContent-Disposition: form-data; name=\"dataset\"; "
                     b"filename=\"d.zip\"\r\nContent-Type: application/zip\r\n\r\n" + body
                     + b"\r\n--b--\r\n")
        for i in range(0, len(multipart), 8192):
            yield multipart[i:i + 8192]

    assert len(body) > 3 * 6000
    r = api.post("/v1/jobs", content=chunks(),
                 headers={"content-type": "multipart/form-data; boundary=b"})
    check_refusal(r, "exceeds the limit of 6000 bytes", "chunked body")
    assert r.status_code == 413 and counts(api) == before


def test_a_job_of_1000_images_is_within_the_documented_limits(api):
    files = [("images", (f"../../{i}.png", png((i % 256, i // 256, 0)), "image/png"))
             for i in range(1000)]
    labels = ["cat" if i % 2 else "dog" for i in range(1000)]
    r = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels})
    assert r.status_code == 202, r.text[:500]
    job_id = r.json()["id"]
    api.post(f"/v1/jobs/{job_id}/cancel")
    from registry import crud

    with api.app.state.context.sessions() as s:
        _, images = crud.training_images(s, job=crud.get_job(s, job_id=job_id))
    names = [name for _, _, name in images]
    assert len(names) == 1000 and not [n for n in names if ".." in n or n.startswith("/")]


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "etc/passwd"), ("/abs/x.png", "abs/x.png"), ("a\\b\x00c.png", "a/bc.png"),
    ("", "fallback"), ("..", "fallback"), ("x" * 500, "x" * 200),
])
def test_file_names_are_normalised_before_they_are_stored(name, expected):
    from service.uploads import clean_filename

    assert clean_filename(name, "fallback") == expected
