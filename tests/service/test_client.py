"""The Python client and ``clipfit remote`` against a real ``clipfit serve`` over HTTP
(SQLite + in-process worker, clipfit-tiny); retries against a scripted transport."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest

from clipfit.cli import main as clipfit_main
from clipfit.client import FINISHED, ApiError, Client

from .test_embedded import Server, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    server = Server(root / "data", free_port(), root / "serve.log")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(server, key, colour_set):
    """One job made and watched through the client: (job, its events)."""
    with Client(str(server.client.base_url), key) as cf:
        job = cf.jobs.create(colour_set, base_model="clipfit-tiny", name="colours",
                             epochs=40, lr=0.1, batch_size=16, val_fraction=0.25)
        assert job.status == "queued" and job.hyperparameters["epochs"] == 40
        events = list(cf.jobs.watch(job.id))
        return cf.jobs.wait(job.id, timeout=120), events


def test_client_trains_watches_and_classifies(server, key, colour_set, trained, tmp_path):
    job, events = trained
    assert job.status == "succeeded" and job.adapter_id
    kinds = [e.kind for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "progress" in kinds
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))  # each event once, in order
    last = [e for e in events if e.kind == "progress"][-1].payload
    assert last["epoch"] == last["epochs"] == 40

    with Client(str(server.client.base_url), key) as cf:
        assert job.id in [j.id for j in cf.jobs.list()]
        assert [j.id for j in cf.jobs.list(status="succeeded")] == [job.id]
        adapter = cf.adapters.get(job.adapter_id)
        assert adapter.classnames == ["blue", "green", "red", "yellow"]
        assert adapter.metrics["val_accuracy"] >= 0.75
        assert [a.id for a in cf.adapters.list()] == [adapter.id]
        with zipfile.ZipFile(io.BytesIO(cf.adapters.download(adapter.id, tmp_path / "a.zip"))) \
                as z:
            assert sorted(z.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert (tmp_path / "a.zip").stat().st_size > 0

        red, blue = colour_set / "red" / "0003.png", colour_set / "blue" / "0001.png"
        tuned = cf.classify([red, blue.read_bytes()], adapter=adapter.id, top_k=2)
        assert [p.label for p in tuned] == ["red", "blue"] and len(tuned[0].top_k) == 2
        zero = cf.classify([red], base_model="clipfit-tiny", classes=["red", "green"], top_k=2)
        assert sorted(label for label, _ in zero[0].top_k) == ["green", "red"]
        kept = cf.classify([red], adapter=adapter.id, reject_unknown=True)
        assert kept[0].label == "red" and not kept[0].unknown
        rejected = cf.classify([red], adapter=adapter.id, threshold=1.0)
        assert rejected[0].label == "unknown" and rejected[0].unknown
        assert rejected[0].top_k[0][0] == "red"  # the candidates are still listed
        report = cf.adapters.evaluation(adapter.id)
        assert report["evaluation"]["tuned"]["accuracy"] == round(adapter.metrics["val_accuracy"], 4)


def test_refusals_carry_the_problem_list_and_store_nothing(server, key, colour_set):
    with Client(str(server.client.base_url), key) as cf:
        before = len(list(cf.jobs.list()))
        with pytest.raises(ApiError) as e:
            cf.jobs.create(colour_set, base_model="clipfit-tiny", epochs=0, lr=-1)
        assert e.value.status == 422
        assert any("epochs" in p for p in e.value.problems)
        assert any("lr" in p for p in e.value.problems)
        assert len(list(cf.jobs.list())) == before
        with pytest.raises(ApiError) as e:
            cf.adapters.get("no-such-adapter")
        assert e.value.status == 404
    with pytest.raises(ApiError) as e, Client(str(server.client.base_url), "cfk_wrong") as cf:
        cf.adapters.get("x")
    assert e.value.status == 401


def test_one_idempotency_key_makes_one_job(server, key, colour_set):
    with Client(str(server.client.base_url), key) as cf:
        first = cf.jobs.create(colour_set, base_model="clipfit-tiny", epochs=1,
                               idempotency_key="same-upload-1")
        again = cf.jobs.create(colour_set, base_model="clipfit-tiny", epochs=1,
                               idempotency_key="same-upload-1")
        assert again.id == first.id
        other = cf.jobs.create(colour_set, base_model="clipfit-tiny", epochs=1)
        assert other.id != first.id  # a fresh key per call otherwise
        for job_id in (first.id, other.id):
            assert cf.jobs.wait(job_id, timeout=120).status in FINISHED


def _scripted(responses: list, seen: list) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    return httpx.Client(base_url="http://clipfit.test", transport=httpx.MockTransport(handler))


def test_retries_honour_retry_after_and_give_up_with_the_error(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("clipfit.client.time.sleep", sleeps.append)
    seen: list = []
    busy = httpx.Response(503, headers={"Retry-After": "7"}, json={"detail": "busy"})
    limited = httpx.Response(429, headers={"Retry-After": "2"}, json={"detail": "slow down"})
    ok = httpx.Response(200, json={"id": "a1", "base_model": "m", "classnames": ["x"]})
    cf = Client(http=_scripted([busy, limited, ok], seen), retries=3)
    assert cf.adapters.get("a1").id == "a1"
    assert sleeps == [7.0, 2.0] and len(seen) == 3

    # without Retry-After: exponential backoff; after the last retry the error is raised
    sleeps.clear()
    cf = Client(http=_scripted([httpx.Response(503, json={"detail": "down"})] * 3, []),
                retries=2, backoff=1.0)
    with pytest.raises(ApiError, match="503: down"):
        cf.adapters.get("a1")
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.5 and 1.0 <= sleeps[1] <= 3.0

    # a lost connection is retried for reads, never for a request that is not safe to repeat
    sleeps.clear()
    lost = httpx.ConnectError("connection refused")
    cf = Client(http=_scripted([lost, ok], []), retries=3)
    assert cf.adapters.get("a1").id == "a1"
    seen.clear()
    cf = Client(http=_scripted([lost], seen), retries=3)
    with pytest.raises(httpx.ConnectError):
        cf.request("POST", "/v1/classify")
    assert len(seen) == 1


def test_remote_cli(server, key, trained, colour_set, tmp_path, capsys, monkeypatch):
    url = str(server.client.base_url)
    job, _ = trained
    monkeypatch.delenv("CLIPFIT_URL", raising=False)
    monkeypatch.delenv("CLIPFIT_API_KEY", raising=False)

    def remote(*args, config: str | None = None) -> tuple[int, str, str]:
        flags = ["--config", config] if config else ["--url", url, "--api-key", key]
        code = clipfit_main(["remote", *flags, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = remote("--json", "jobs", "create", str(colour_set), "--model",
                            "clipfit-tiny", "--epochs", "3", "--batch-size", "16", "--lambda",
                            "4", "--watch")
    assert code == 0, err
    lines = out.strip().splitlines()
    events = [json.loads(line) for line in lines if line.startswith('{"id": ')]
    assert events[0]["kind"] == "queued" and events[-1]["kind"] == "succeeded"
    final = json.loads("\n".join(lines[len(events):]))
    assert final["status"] == "succeeded" and final["hyperparameters"]["epochs"] == 3
    assert final["hyperparameters"]["lambda"] == 4.0  # the API's name, from the spec

    code, out, _ = remote("jobs", "ls")
    assert code == 0 and job.id in out and final["id"] in out
    code, out, _ = remote("jobs", "show", job.id)
    assert code == 0 and f"job {job.id}: succeeded (colours)" in out
    code, out, _ = remote("adapters", "ls")
    assert code == 0 and job.adapter_id in out and "tuned" in out
    target = tmp_path / "delta.zip"
    code, out, _ = remote("adapters", "download", job.adapter_id, "-o", str(target))
    assert code == 0 and zipfile.is_zipfile(target)
    merged = tmp_path / "merged.zip"
    code, out, _ = remote("adapters", "download", job.adapter_id, "--format", "open_clip",
                          "-o", str(merged))
    with zipfile.ZipFile(merged) as z:
        assert "open_clip_model.safetensors" in z.namelist()
    code, out, _ = remote("--json", "adapters", "import", str(target), "--name", "copy")
    copy = json.loads(out)
    assert code == 0 and copy["id"] != job.adapter_id and copy["name"] == "copy"
    code, out, _ = remote("adapters", "delete", copy["id"])
    assert code == 0
    code, out, _ = remote("--json", "jobs", "create", str(colour_set), "--epochs", "1",
                          "--lr", "auto", "--parent", job.adapter_id)
    warm = json.loads(out)
    assert code == 0 and warm["parent_adapter_id"] == job.adapter_id
    assert warm["auto"] == ["lr"] and warm["hyperparameters"]["lr"] == 0.1
    code, out, _ = remote("--json", "datasets", "create", str(colour_set))
    dataset = json.loads(out)
    assert code == 0 and dataset["images"] == 64
    code, out, _ = remote("--json", "jobs", "create", "--dataset", dataset["id"], "--epochs", "1")
    assert code == 0 and json.loads(out)["status"] == "queued"
    code, out, _ = remote("datasets", "show", dataset["id"])
    assert code == 0 and "64 images" in out and "blue 16" in out
    code, _, err = remote("datasets", "rm", dataset["id"])
    assert code == 1 and "409" in err  # a job used it: kept
    image = colour_set / "green" / "0002.png"
    code, out, _ = remote("--json", "classify", str(image), "--adapter", job.adapter_id)
    assert code == 0 and json.loads(out)[0]["label"] == "green"
    code, out, _ = remote("classify", str(image), "--adapter", job.adapter_id,
                          "--threshold", "1")  # nothing reaches probability 1: all unknown
    assert code == 0 and out.split("\t")[1] == "unknown"
    code, out, _ = remote("adapters", "evaluation", job.adapter_id)
    assert code == 0 and "zero-shot recall" in out and "calibration: temperature" in out
    code, out, _ = remote("--json", "adapters", "evaluation", job.adapter_id)
    report = json.loads(out)
    assert report["evaluation"]["classnames"] == ["blue", "green", "red", "yellow"]

    # URL and key from a config file; then from the environment
    config = tmp_path / "remote.toml"
    config.write_text(f'url = "{url}"\napi_key = "{key}"\n')
    code, out, _ = remote("--json", "adapters", "show", job.adapter_id, config=str(config))
    assert code == 0 and json.loads(out)["id"] == job.adapter_id
    monkeypatch.setenv("CLIPFIT_URL", url)
    monkeypatch.setenv("CLIPFIT_API_KEY", key)
    assert clipfit_main(["remote", "jobs", "show", job.id]) == 0
    capsys.readouterr()

    # a refusal: every problem, exit status 1, no traceback
    code, _, err = remote("jobs", "create", str(colour_set), "--epochs", "0")
    assert code == 1 and "the service refused: 422" in err and "epochs" in err
    code, _, err = remote("classify", str(image))
    assert code == 2 and "--adapter" in err
