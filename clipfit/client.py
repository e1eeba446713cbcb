"""A Python client for a clipfit service, over HTTP (httpx, synchronous).

    from clipfit.client import Client

    with Client("http://127.0.0.1:8000", api_key="cf_...") as cf:
        job = cf.jobs.create("data/train", base_model="clipfit-mini", epochs=30)
        for event in cf.jobs.watch(job.id):          # Server-Sent Events, live
            print(event.kind, event.payload)
        job = cf.jobs.wait(job.id)                   # or just wait
        adapter = cf.adapters.get(job.adapter_id)
        for p in cf.classify(["photo.png"], adapter=adapter.id):
            print(p.label, p.top_k)

URL and key default to ``CLIPFIT_URL`` and ``CLIPFIT_API_KEY``. Every answer is a typed
object (``Job``, ``Event``, ``Adapter``, ``Prediction``, ``BatchPrediction``, ``Alias``, ``Webhook``,
``Delivery``, ``CaptureSettings``, ``Capture``) that keeps the whole JSON in ``raw``. A refusal raises ``ApiError`` with the API's list of problems. ``429`` and ``503``
are retried with exponential backoff, honouring ``Retry-After``; so are lost connections,
for requests that are safe to repeat (reads, and job creation, which carries an
``Idempotency-Key`` generated per call so a retried upload makes one job).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

import httpx

from clipfit_core.version import __version__

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
FINISHED = ("succeeded", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"clipfit-client/{__version__}"


class ApiError(Exception):
    """The service refused a request: ``status``, its ``message`` and every ``problem``."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None,
                 body: Any = None):
        self.status, self.message, self.problems, self.body = status, message, problems or [], body
        listed = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"{status}: {message}{listed}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            return cls(response.status_code, response.text[:500] or response.reason_phrase)
        detail = body.get("detail", body) if isinstance(body, dict) else body
        if isinstance(detail, dict):
            return cls(response.status_code, str(detail.get("message", "")),
                       [str(p) for p in detail.get("problems", [])], body)
        if isinstance(detail, list):  # FastAPI's own shape, should one slip through
            return cls(response.status_code, "invalid request",
                       [str(d.get("msg", d)) if isinstance(d, dict) else str(d)
                        for d in detail], body)
        return cls(response.status_code, str(detail), [], body)


def _typed(cls, data: dict):
    known = {f.name for f in fields(cls)} - {"raw"}
    return cls(**{k: data.get(k) for k in known}, raw=data)


class _Ends:
    """A job's or a batch prediction's status, which ends in succeeded, failed or
    cancelled."""

    status: str

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Job(_Ends):
    id: str
    status: str
    name: str | None = None
    base_model: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    auto: list[str] | None = None  # the hyperparameters given as "auto"
    parent_adapter_id: str | None = None  # a warm start's adapter
    dataset_id: str | None = None  # the dataset (version) it trains on
    retrain: dict | None = None  # a retrain: what it took (added, benchmarked, ...)
    progress: dict | None = None
    error: str | None = None
    adapter_id: str | None = None
    attempts: int | None = None
    created_at: str | None = None
    finished_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Event:
    id: int
    kind: str
    payload: dict
    created_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Adapter:
    id: str
    base_model: str
    classnames: list[str]
    name: str | None = None
    version: int | None = None
    job_id: str | None = None
    metrics: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    trainable_count: int | None = None
    size_bytes: int | None = None
    dataset_id: str | None = None  # the dataset version its job trained on
    benchmark_images: int | None = None  # a retrain: its name's benchmark images left out
    created_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Prediction:
    label: str  # "unknown" when rejected (``unknown`` is then True)
    top_k: list[tuple[str, float]]
    raw: dict = field(default_factory=dict, repr=False)
    unknown: bool = False


def zip_folder(root: Path) -> bytes:
    """A folder with one sub-folder per class as a zip (the layout the API reads)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                z.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def folder_summary(root: Path) -> dict[str, int]:
    """Images per class of a folder-per-class dataset (``_`` in a folder name reads as a
    space, as the service reads it)."""
    return {folder.name.replace("_", " "): sum(1 for p in folder.rglob("*") if p.is_file()
                                               and p.suffix.lower() in IMAGE_SUFFIXES)
            for folder in sorted(p for p in root.iterdir() if p.is_dir())}


class Client:
    """A session with one service. ``http`` may be any ``httpx.Client`` already pointed at
    the service (tests pass FastAPI's TestClient); then ``url`` is ignored."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 300.0, retries: int = 5, backoff: float = 0.5,
                 max_wait: float = 60.0, http: httpx.Client | None = None):
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        api_key = api_key if api_key is not None else os.environ.get("CLIPFIT_API_KEY")
        if http is None:
            url = url or os.environ.get("CLIPFIT_URL") or DEFAULT_URL
            http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.http = http
        self.http.headers["User-Agent"] = USER_AGENT
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.jobs = Jobs(self)
        self.adapters = Adapters(self)
        self.aliases = Aliases(self)
        self.datasets = Datasets(self)
        self.webhooks = Webhooks(self)
        self.predictions = Predictions(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --- transport ------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after is not None:
            try:
                return min(self.max_wait, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.max_wait, self.backoff * 2 ** attempt * (0.5 + random.random()))

    def request(self, method: str, path: str, *, idempotent: bool | None = None,
                **kwargs) -> httpx.Response:
        """One API call, retried on 429 / 503 (always: the service changed nothing) and on
        lost connections (only when ``idempotent``: reads, deletes, keyed creation).
        A 4xx / 5xx answer raises ApiError."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not idempotent or attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in (429, 503) and attempt < self.retries:
                time.sleep(self._delay(attempt, response))
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response
        raise AssertionError("unreachable")

    def get_json(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[dict]:
        """Every item of a cursor-paged list (``data`` + ``next_cursor``), page by page."""
        params = dict(params)
        while True:
            page = self.get_json(path, params=params)
            yield from page["data"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def version(self) -> dict:
        """The service's release and API version: ``{"version": "0.2.0", "api": "v1"}``."""
        return self.get_json("/v1/version")

    def ready(self, timeout: float = 60.0) -> None:
        """Wait until ``/readyz`` answers 200 (the database and the queue are reachable)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.http.base_url} is not ready after {timeout:.0f} s")
            time.sleep(0.5)

    # --- classification -------------------------------------------------------------------

    def classify(self, images: Iterable[str | Path | bytes], *, adapter: str | None = None,
                 base_model: str | None = None, classes: Iterable[str] | None = None,
                 top_k: int = 5, template: str | None = None, reject_unknown: bool = False,
                 threshold: float | None = None, calibrated: bool = True) -> list[Prediction]:
        """Predictions for image files (paths or bytes), in order: with an ``adapter`` (its
        classes, or other ``classes``), or zero-shot with ``base_model`` and ``classes``.
        ``reject_unknown`` answers "unknown" below the adapter's stored threshold, or below
        ``threshold``; ``calibrated`` applies the adapter's fitted temperature."""
        files = []
        for i, image in enumerate(images):
            if isinstance(image, bytes):
                files.append(("images", (f"image{i}", image, "application/octet-stream")))
            else:
                path = Path(image)
                files.append(("images", (path.name, path.read_bytes(),
                                         "application/octet-stream")))
        data = {"top_k": str(top_k)}
        if adapter:
            data["adapter_id"] = adapter
        if base_model:
            data["base_model"] = base_model
        if classes is not None:
            data["classes"] = ",".join(classes)
        if template:
            data["template"] = template
        if reject_unknown:
            data["reject_unknown"] = "true"
        if threshold is not None:
            data["threshold"] = str(threshold)
        if not calibrated:
            data["calibrated"] = "false"
        body = self.request("POST", "/v1/classify", data=data, files=files,
                            idempotent=True).json()
        return [Prediction(p["label"], [(t["label"], t["prob"]) for t in p["top_k"]], raw=p,
                           unknown=p.get("unknown", False))
                for p in body["predictions"]]


class Jobs:
    path = "/v1/jobs"

    def __init__(self, client: Client):
        self._c = client

    def create(self, source: str | Path | Iterable[tuple[str | Path, str]] | None = None, *,
               base_model: str | None = None, name: str | None = None,
               classes: Iterable[str] | None = None, idempotency_key: str | None = None,
               **hyperparameters: Any) -> Job:
        """Submit a training job. ``source`` is a folder with one sub-folder per class, a
        ``.zip`` (folder-per-class or with ``manifest.csv``), or ``(image path, label)``
        pairs. Hyperparameters go by their API names (``epochs``, ``lr``, ``lambda_``
        for ``lambda``, ``crop_min``, ``alpha``, ...)."""
        files, data = _upload(source) if source is not None else ([], {})
        for key, value in {"base_model": base_model, "name": name, **hyperparameters}.items():
            if value is not None:
                data[key.rstrip("_")] = str(value)
        if classes is not None:
            data["classes"] = ",".join(classes)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = self._c.request("POST", "/v1/jobs", data=data, files=files, headers=headers,
                               idempotent=True).json()
        return _typed(Job, body)

    def get(self, job_id: str) -> Job:
        return _typed(Job, self._c.get_json(f"/v1/jobs/{job_id}"))

    def list(self, *, status: str | None = None, limit: int = 50) -> Iterator[Job]:
        """Every job of the tenant, newest first, page by page."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        yield from (_typed(Job, j) for j in self._c.pages("/v1/jobs", params))

    def cancel(self, job_id: str) -> Job:
        return _typed(Job, self._c.request("POST", f"/v1/jobs/{job_id}/cancel",
                                           idempotent=True).json())

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The job's events so far (after event id ``after``)."""
        out, cursor = [], after
        while True:
            page = self._c.get_json(f"{self.path}/{job_id}/events",
                                    params={"cursor": cursor, "limit": 1000})
            out += [_typed(Event, e) for e in page["data"]]
            if not page.get("next_cursor"):
                return out
            cursor = int(page["next_cursor"])

    def watch(self, job_id: str, after: int = 0) -> Iterator[Event]:
        """The job's events as they happen (Server-Sent Events), until its final one. A
        dropped connection resumes after the last event seen (``Last-Event-ID``)."""
        last = after
        failures = 0
        while True:
            try:
                headers = {"Last-Event-ID": str(last)} if last else {}
                with self._c.http.stream("GET", f"{self.path}/{job_id}/events",
                                         params={"stream": "true", "cursor": last},
                                         headers=headers, timeout=None) as stream:
                    if stream.status_code >= 400:
                        stream.read()
                        raise ApiError.from_response(stream)
                    for line in stream.iter_lines():
                        if line.startswith("data:"):
                            event = _typed(Event, json.loads(line[5:].strip()))
                            last, failures = event.id, 0
                            yield event
                return  # the service ends the stream after the job's final event
            except (httpx.TransportError, httpx.StreamError):
                failures += 1
                if failures > self._c.retries:
                    raise
                time.sleep(self._c._delay(failures, None))

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 1.0) -> Job:
        """Block until the job finishes (succeeded, failed or cancelled); return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f} s")
            time.sleep(poll)


def _upload(source: str | Path | Iterable[tuple[str | Path, str]]) -> tuple[list, dict]:
    """(files, form data) for a folder per class, a zip, or (image path, label) pairs."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return [("dataset", (f"{path.name or 'dataset'}.zip", zip_folder(path),
                                 "application/zip"))], {}
        if path.is_file():
            return [("dataset", (path.name, path.read_bytes(), "application/zip"))], {}
        raise FileNotFoundError(f"{path}: no such folder or zip file")
    files, labels = [], []
    for image, label in source:
        image = Path(image)
        files.append(("images", (image.name, image.read_bytes(), "application/octet-stream")))
        labels.append(label)
    return files, {"labels": labels}


class Datasets:
    """Stored image sets: train jobs on them with ``jobs.create(dataset_id=...)``."""

    def __init__(self, client: Client):
        self._c = client

    def create(self, source: str | Path | Iterable[tuple[str | Path, str]]) -> dict:
        files, data = _upload(source)
        return self._c.request("POST", "/v1/datasets", files=files, data=data).json()

    def list(self, *, limit: int = 50) -> list[dict]:
        return self._c.get_json("/v1/datasets", params={"limit": limit})["data"]

    def get(self, dataset_id: str) -> dict:
        return self._c.get_json(f"/v1/datasets/{dataset_id}")

    def add(self, dataset_id: str, source: str | Path | Iterable[tuple[str | Path, str]]
            ) -> dict:
        """A new version of the dataset with more images (new classes allowed): its own id,
        ``parent_id`` the dataset given, which stays as it is."""
        files, data = _upload(source)
        return self._c.request("POST", f"/v1/datasets/{dataset_id}/images", files=files,
                               data=data).json()

    def delete(self, dataset_id: str) -> None:
        self._c.request("DELETE", f"/v1/datasets/{dataset_id}")


@dataclass
class Alias:
    name: str
    alias: str
    adapter_id: str
    version: int | None = None
    reference: str | None = None  # name@alias: what classify(adapter=...) takes
    updated_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


class Aliases:
    """``name@alias`` pointers at one version of a named adapter."""

    def __init__(self, client: Client):
        self._c = client

    def set(self, name: str, alias: str, *, version: int | None = None,
            adapter_id: str | None = None) -> Alias:
        """Create or move ``name@alias`` (rollback: set it back to the previous version)."""
        body = {"name": name, "version": version, "adapter_id": adapter_id}
        return _typed(Alias, self._c.request(
            "PUT", f"/v1/aliases/{alias}", json={k: v for k, v in body.items() if v is not None},
            idempotent=True).json())

    def list(self, *, name: str | None = None) -> list[Alias]:
        params = {"name": name} if name else {}
        return [_typed(Alias, a)
                for a in self._c.get_json("/v1/aliases", params=params)["data"]]

    def delete(self, name: str, alias: str) -> None:
        self._c.request("DELETE", f"/v1/aliases/{alias}", params={"name": name})


class Adapters:
    def __init__(self, client: Client):
        self._c = client

    def list(self, *, limit: int = 50) -> Iterator[Adapter]:
        yield from (_typed(Adapter, a) for a in self._c.pages("/v1/adapters",
                                                              {"limit": limit}))

    def get(self, adapter_id: str) -> Adapter:
        return _typed(Adapter, self._c.get_json(f"/v1/adapters/{adapter_id}"))

    def evaluation(self, adapter_id: str) -> dict:
        """The held-out report: ``evaluation`` (zero-shot and tuned, per class, confusion
        matrices) and ``calibration`` (temperature, calibration error, threshold)."""
        return self._c.get_json(f"/v1/adapters/{adapter_id}/evaluation")

    def stats(self, adapter_id: str, *, hours: int = 24, lineage: bool = False) -> dict:
        """What the adapter served, hour by hour over the last ``hours`` (1 to 2160, the
        current hour included): answers, the shares answered "unknown", of low confidence and
        captured, a histogram of the top probability, the totals and the held-out baseline,
        under ``versions`` (with ``lineage``: every version of its name)."""
        return self._c.get_json(f"/v1/adapters/{adapter_id}/stats",
                                params={"hours": hours, "lineage": str(lineage).lower()})

    def download(self, adapter_id: str, to: str | Path | None = None, *,
                 format: str = "delta") -> bytes:
        """The adapter as a zip, written to ``to`` if given: ``delta`` (the two delta files)
        or ``open_clip`` (the base with the delta merged, as open_clip's files)."""
        content = self._c.request("GET", f"/v1/adapters/{adapter_id}/download",
                                  params={"format": format}).content
        if to is not None:
            Path(to).write_bytes(content)
        return content

    def import_zip(self, delta_zip: str | Path | bytes, *, name: str | None = None) -> Adapter:
        """Store a delta zip (as ``download`` gives it) trained on a base this service
        allows, with the same weights; it gets a new id."""
        data = delta_zip if isinstance(delta_zip, bytes) else Path(delta_zip).read_bytes()
        return _typed(Adapter, self._c.request(
            "POST", "/v1/adapters", files={"file": ("adapter.zip", data, "application/zip")},
            data={"name": name} if name else {}).json())

    def delete(self, adapter_id: str) -> None:
        self._c.request("DELETE", f"/v1/adapters/{adapter_id}")

    def retrain(self, adapter_id: str, *, promote: str | None = None,
                alias: str | None = None, **hyperparameters: Any) -> Job:
        """Train the next version of the adapter's name, warm-started from it, on its
        dataset plus the labelled captures that wait (a new dataset version; every fifth
        capture joins the name's benchmark set instead). ``promote`` (``manual`` or
        ``auto``) and ``alias`` are kept for promotion; hyperparameters (API names,
        ``lambda_`` for ``lambda``) override the parent job's. The queued job; its
        ``retrain`` says what it took."""
        body: dict[str, Any] = {"promote": promote, "alias": alias}
        body = {k: v for k, v in body.items() if v is not None}
        values = {k.rstrip("_"): v for k, v in hyperparameters.items() if v is not None}
        if values:
            body["hyperparameters"] = values
        return _typed(Job, self._c.request("POST", f"/v1/adapters/{adapter_id}/retrain",
                                           json=body).json())

    # --- capture and review ---------------------------------------------------------------

    def set_capture(self, adapter_id: str, *, sample_rate: float | None = None,
                    below_confidence: float | None = None, unknown: bool = False,
                    classes: Iterable[str] | None = None, max_per_hour: int | None = None,
                    max_per_day: int | None = None, retention_days: int | None = None,
                    alias: str | None = None, retrain_after: int | None = None,
                    promote: str | None = None) -> CaptureSettings:
        """Capture classified images of the adapter's lineage (its name: every version) for
        review, by these rules (at least one): a random ``sample_rate``, a top probability
        ``below_confidence``, answers of ``unknown``, answers of some ``classes``; capped
        per hour / day, kept ``retention_days``; with ``alias``, only requests through
        ``name@alias``. With ``retrain_after``, the label that makes that many labelled
        captures wait starts a retrain (its ``promote``: manual or auto). Replaces the
        lineage's settings."""
        body = {"sample_rate": sample_rate, "below_confidence": below_confidence,
                "unknown": unknown or None, "max_per_hour": max_per_hour,
                "max_per_day": max_per_day, "retention_days": retention_days, "alias": alias,
                "classes": list(classes) if classes is not None else None,
                "retrain_after": retrain_after, "promote": promote}
        return _typed(CaptureSettings, self._c.request(
            "PUT", f"/v1/adapters/{adapter_id}/capture",
            json={k: v for k, v in body.items() if v is not None}, idempotent=True).json())

    def get_capture(self, adapter_id: str) -> CaptureSettings:
        """The lineage's capture settings (``enabled`` False: nothing is captured)."""
        return _typed(CaptureSettings, self._c.get_json(f"/v1/adapters/{adapter_id}/capture"))

    def disable_capture(self, adapter_id: str) -> None:
        """Stop capturing (what was captured stays until it expires)."""
        self._c.request("DELETE", f"/v1/adapters/{adapter_id}/capture")

    def captures(self, adapter_id: str, *, rule: str | None = None,
                 predicted: str | None = None, min_confidence: float | None = None,
                 max_confidence: float | None = None, state: str | None = None,
                 limit: int = 50) -> Iterator[Capture]:
        """The lineage's captures, newest first, page by page: by ``rule`` (``unknown``,
        ``below_confidence``, ``classes``, ``sample_rate``), ``predicted`` label, confidence
        range, ``state`` (``pending``, ``labelled``, ``discarded``)."""
        params = {"rule": rule, "predicted": predicted, "min_confidence": min_confidence,
                  "max_confidence": max_confidence, "state": state, "limit": limit}
        yield from (_typed(Capture, c) for c in self._c.pages(
            f"/v1/adapters/{adapter_id}/captures",
            {k: v for k, v in params.items() if v is not None}))

    def capture(self, adapter_id: str, capture_id: str) -> Capture:
        return _typed(Capture, self._c.get_json(
            f"/v1/adapters/{adapter_id}/captures/{capture_id}"))

    def capture_image(self, adapter_id: str, capture_id: str,
                      to: str | Path | None = None) -> bytes:
        """The captured image as classify received it, written to ``to`` if given."""
        content = self._c.request(
            "GET", f"/v1/adapters/{adapter_id}/captures/{capture_id}/image").content
        if to is not None:
            Path(to).write_bytes(content)
        return content

    def label_capture(self, adapter_id: str, capture_id: str, label: str | None = None, *,
                      new_class: bool = False, discard: bool = False) -> Capture:
        """Label a capture with one of the adapter's classes (or a new class, with
        ``new_class``), or ``discard`` it."""
        return _typed(Capture, self._c.request(
            "POST", f"/v1/adapters/{adapter_id}/captures/{capture_id}",
            json=_label_body(label, new_class, discard), idempotent=True).json())

    def label_captures(self, adapter_id: str, items: Iterable[dict]) -> list[Capture]:
        """Label or discard many captures at once, all or none: ``items`` of ``{"id",
        "label"[, "new_class": True]}`` or ``{"id", "discard": True}``. A refusal names
        every bad item."""
        return [_typed(Capture, c) for c in self._c.request(
            "POST", f"/v1/adapters/{adapter_id}/captures:label",
            json={"items": list(items)}, idempotent=True).json()["data"]]


def _label_body(label: str | None, new_class: bool, discard: bool) -> dict:
    body: dict[str, Any] = {"discard": True} if discard else {}
    if label is not None:
        body["label"] = label
    if new_class:
        body["new_class"] = True
    return body


@dataclass
class CaptureSettings:
    adapter_id: str
    lineage: str  # the adapter's name (every version), or its id when unnamed
    enabled: bool
    alias: str | None = None
    sample_rate: float | None = None
    below_confidence: float | None = None
    unknown: bool = False
    classes: list[str] = field(default_factory=list)
    max_per_hour: int | None = None
    max_per_day: int | None = None
    retention_days: int | None = None
    retrain_after: int | None = None  # labelled captures waiting that start a retrain
    promote: str | None = None  # of such a retrain: manual or auto
    updated_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Capture:
    id: str
    adapter_id: str  # the version that answered
    rule: str  # unknown, below_confidence, classes or sample_rate
    predicted: str  # the answer's label ("unknown" when rejected)
    confidence: float
    state: str  # pending, labelled or discarded
    lineage: str | None = None
    unknown: bool = False
    top_k: list[dict] = field(default_factory=list)
    filename: str | None = None
    media_type: str | None = None
    size_bytes: int | None = None
    label: str | None = None
    new_class: bool = False
    labelled_at: str | None = None
    dataset_id: str | None = None  # the dataset version a retrain added it to
    benchmark: bool = False  # a retrain set it aside into the benchmark set
    created_at: str | None = None
    expires_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Webhook:
    id: str
    url: str
    events: list[str]
    description: str | None = None
    created_at: str | None = None
    secret: str | None = None  # the signing secret (whsec_...): given only by create
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Delivery:
    id: str  # the webhook-id header the receiver sees, the same on every attempt
    event_type: str
    status: str  # pending, succeeded or failed
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    payload: dict = field(default_factory=dict)
    created_at: str | None = None
    next_attempt_at: str | None = None
    delivered_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


class Webhooks:
    """Endpoints the service POSTs signed events to (Standard Webhooks), and their delivery
    log."""

    def __init__(self, client: Client):
        self._c = client

    def create(self, url: str, events: Iterable[str], *, description: str | None = None
               ) -> Webhook:
        """Register ``url`` for ``events`` (``job.succeeded``, ``job.failed``,
        ``job.cancelled``, ``adapter.deleted``, ``adapter.drift``, ``adapter.version_ready``).
        The answer's ``secret`` verifies the signatures; the service shows it only now."""
        body = {"url": url, "events": list(events), "description": description}
        return _typed(Webhook, self._c.request(
            "POST", "/v1/webhooks", json={k: v for k, v in body.items() if v is not None}
        ).json())

    def list(self) -> list[Webhook]:
        return [_typed(Webhook, w) for w in self._c.get_json("/v1/webhooks")["data"]]

    def get(self, webhook_id: str) -> Webhook:
        return _typed(Webhook, self._c.get_json(f"/v1/webhooks/{webhook_id}"))

    def delete(self, webhook_id: str) -> None:
        self._c.request("DELETE", f"/v1/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str, *, limit: int = 50) -> list[Delivery]:
        """The endpoint's deliveries, newest first: status, attempts, the last answer."""
        return [_typed(Delivery, d) for d in self._c.get_json(
            f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": limit})["data"]]

    def redeliver(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Send a delivery again, soon (also one that failed for good)."""
        return _typed(Delivery, self._c.request(
            "POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            idempotent=True).json())


@dataclass
class BatchPrediction(_Ends):
    """A batch prediction (``/v1/predictions``): ``counts`` has images, done, classified,
    unknown and unreadable."""

    id: str
    status: str
    adapter_id: str | None = None
    adapter: str | None = None
    base_model: str | None = None
    classes: list[str] = field(default_factory=list)
    top_k: int | None = None
    source: str | None = None
    dataset_id: str | None = None
    counts: dict = field(default_factory=dict)
    progress: dict | None = None
    attempts: int | None = None
    error: str | None = None
    results: dict | None = None
    links: dict = field(default_factory=dict)
    created_at: str | None = None
    finished_at: str | None = None
    raw: dict = field(default_factory=dict, repr=False)


class Predictions(Jobs):
    """Batch predictions: many images classified in a worker, the answers kept as a file
    (JSON Lines or CSV, one row per image). Followed like jobs: ``watch``, ``wait``,
    ``events``, ``cancel``."""

    path = "/v1/predictions"

    def create(self, source: str | Path | None = None, *, adapter: str | None = None,
               classes: Iterable[str] | None = None, base_model: str | None = None,
               dataset_id: str | None = None, images: Iterable[str] | None = None,
               top_k: int = 5, template: str | None = None, reject_unknown: bool = False,
               threshold: float | None = None, calibrated: bool = True,
               idempotency_key: str | None = None) -> BatchPrediction:
        """Classify ``source`` (a folder of images, at any depth, or a zip of them), or a
        stored ``dataset_id``, or stored ``images`` (sha256 digests), with an ``adapter``
        (id, NAME@VERSION, NAME@ALIAS) or zero-shot ``classes`` (on ``base_model``)."""
        options: dict[str, Any] = {
            "adapter": adapter, "base_model": base_model, "template": template,
            "top_k": top_k, "threshold": threshold,
            "reject_unknown": reject_unknown or None, "calibrated": None if calibrated else False}
        options = {k: v for k, v in options.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if source is not None:
            files, _ = _upload(Path(source))  # a folder (zipped here) or a zip
            data = {k: str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in options.items()}
            if classes is not None:
                data["classes"] = ",".join(classes)
            response = self._c.request("POST", self.path, data=data, headers=headers,
                                       idempotent=True, files=files)
        else:
            body = options | {"dataset_id": dataset_id,
                              "images": list(images) if images is not None else None,
                              "classes": list(classes) if classes is not None else None}
            response = self._c.request("POST", self.path, headers=headers, idempotent=True,
                                       json={k: v for k, v in body.items() if v is not None})
        return _typed(BatchPrediction, response.json())

    def get(self, prediction_id: str) -> BatchPrediction:
        return _typed(BatchPrediction, self._c.get_json(f"{self.path}/{prediction_id}"))

    def list(self, *, status: str | None = None, limit: int = 50
             ) -> Iterator[BatchPrediction]:
        """Every batch prediction of the tenant, newest first, page by page."""
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        yield from (_typed(BatchPrediction, p) for p in self._c.pages(self.path, params))

    def cancel(self, prediction_id: str) -> BatchPrediction:
        return _typed(BatchPrediction, self._c.request(
            "POST", f"{self.path}/{prediction_id}/cancel", idempotent=True).json())

    def results(self, prediction_id: str, *, format: str = "jsonl",
                to: str | Path | None = None) -> bytes | Path:
        """The result file (``jsonl`` or ``csv``) of a prediction that succeeded: its bytes,
        or written to ``to`` (its path returned)."""
        data = self._c.request("GET", f"{self.path}/{prediction_id}/results",
                               params={"format": format}).content
        if to is None:
            return data
        path = Path(to)
        path.write_bytes(data)
        return path

    def rows(self, prediction_id: str) -> list[dict]:
        """The results, one dict per image: name, sha256, label, unknown, top_k, error."""
        return [json.loads(line) for line in
                self.results(prediction_id).split(b"\n") if line]
