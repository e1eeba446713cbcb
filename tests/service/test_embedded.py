"""The embedded default: ``clipfit serve`` with no configuration (SQLite file, Celery worker
in process) as a user runs it, over HTTP; a crash mid-job loses nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import clipfit
from clipfit_core.synthetic import write_dataset

from .conftest import FINISHED, image_files, stop_process_group, wait_for, zip_folder

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, port: int, log: Path, env: dict | None = None):
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFIT_")}
        env |= {"CLIPFIT_BASE_MODELS": "clipfit-tiny", "CLIPFIT_PROGRESS_INTERVAL_SECONDS": "0.2"}
        env |= extra
        self.log = log
        self.handle = open(log, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipfit", "serve", "--data-dir", str(data_dir),
             "--port", str(port)], env=env, cwd=data_dir.parent, stdout=self.handle,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log.read_text()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    if "Authorization" not in self.client.headers:
                        # the first admin key, printed once by the first start on this data dir
                        key = re.search(r"^    (cfk_\S+)$", self.log.read_text(), re.MULTILINE)
                        self.client.headers["Authorization"] = f"Bearer {key.group(1)}"
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve not ready:\n{self.log.read_text()}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process_group(self.proc, grace=20)
        self.client.close()
        self.handle.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(port: int | None = None) -> Server:
        server = Server(tmp_path / "data", port or free_port(), tmp_path / "serve.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_bootstrap_admin_key_file_is_stored_not_printed(tmp_path):
    import secrets

    secret = "cfk_" + secrets.token_urlsafe(32)
    key_file = tmp_path / "admin_key"
    key_file.write_text(secret + "\n")  # a trailing newline, as `echo` and editors leave it
    server = Server(tmp_path / "data", free_port(), tmp_path / "serve.log",
                    env={"CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE": str(key_file)})
    try:
        server.client.headers["Authorization"] = f"Bearer {secret}"
        server.wait_ready()
        assert server.client.get("/v1/jobs").status_code == 200
        assert server.client.get("/v1/keys").status_code == 200  # an admin key
        log = server.log.read_text()
        assert secret not in log and "created the first admin API key" not in log, log
    finally:
        server.stop()


def serve_until_exit(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``clipfit serve`` that is expected to refuse to start (it would serve forever else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFIT_")} | env
    return subprocess.run(
        [sys.executable, "-m", "clipfit", "serve", "--data-dir", str(tmp_path / "data"),
         "--port", str(free_port()), "--no-worker"], env=env, capture_output=True, text=True,
        timeout=120, check=False)


@pytest.mark.parametrize("content", ["", "not-a-key", "cfk_short", "cfk_" + "a" * 43,
                                     "cfk_" + "é" * 40])
def test_bootstrap_admin_key_file_refuses_a_bad_key(tmp_path, content):
    key_file = tmp_path / "admin_key"
    key_file.write_text(content)
    done = serve_until_exit(tmp_path, {"CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE": str(key_file)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE" in done.stderr and "not a clipfit key" in \
        done.stderr, done.stderr
    assert "cfk_" not in done.stdout, done.stdout  # no key was made up and printed instead


def test_bootstrap_admin_key_file_missing_is_an_error(tmp_path):
    done = serve_until_exit(tmp_path,
                            {"CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE": str(tmp_path / "absent")})
    assert done.returncode == 2 and "cannot read it" in done.stderr, done.stderr


def test_embedded_service_end_to_end_and_crash_recovery(serve, colour_set, tmp_path):
    port = free_port()
    server = serve(port)
    server.wait_ready()
    assert (tmp_path / "data" / "clipfit.sqlite3").exists()
    api = server.client
    assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 401  # no key

    # a second service on the same data directory is refused, with a reason
    other = serve()
    assert other.proc.wait(60) != 0
    assert "another 'clipfit serve' is using" in (tmp_path / "serve.log").read_text()

    red = (colour_set / "red" / "0003.png").read_bytes()

    def zero_shot() -> list:
        r = api.post("/v1/classify", data={"base_model": "clipfit-tiny", "top_k": "4",
                                           "classes": "red,green,blue,yellow"},
                     files=[("images", ("r.png", red, "image/png"))])
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]["top_k"]

    # a long job, cut off by a crash of the whole service while it runs
    before = zero_shot()
    slow = api.post("/v1/jobs", files={"dataset": ("colours.zip", zip_folder(colour_set))},
                    data={"base_model": "clipfit-tiny", "epochs": "60", "batch_size": "8",
                          "lr": "0.1"}).json()
    wait_for(api, slow["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 5)
    # serving shares the process, not the weights, with the training in progress
    assert zero_shot() == before
    assert api.get(f"/v1/jobs/{slow['id']}").json()["status"] == "running"
    server.kill()
    # the service comes back: the job is run again; a new one queues behind it
    server = serve(port)
    server.wait_ready()
    api = server.client
    files, labels = image_files(colour_set)
    fast = api.post("/v1/jobs", files=files, data={
        "labels": labels, "epochs": "40", "lr": "0.1", "batch_size": "16",
        "val_fraction": "0.25"}).json()
    assert fast["base_model"] == "clipfit-tiny"  # the first of the allow-list

    slow = wait_for(api, slow["id"], lambda j: j["status"] in FINISHED, timeout=300)
    assert slow["status"] == "succeeded" and slow["attempts"] == 2, slow
    fast = wait_for(api, fast["id"], lambda j: j["status"] in FINISHED, timeout=120)
    assert fast["status"] == "succeeded" and fast["attempts"] == 1, fast

    adapter = api.get(f"/v1/adapters/{fast['adapter_id']}").json()
    assert adapter["metrics"]["val_accuracy"] >= 0.75, adapter["metrics"]
    red = (colour_set / "red" / "0003.png").read_bytes()
    tuned = api.post("/v1/classify", data={"adapter_id": adapter["id"]},
                     files=[("images", ("r.png", red, "image/png"))]).json()
    assert tuned["predictions"][0]["label"] == "red"
    zero = api.post("/v1/classify", data={"base_model": "clipfit-tiny",
                                          "classes": "red, green, blue", "top_k": "3"},
                    files=[("images", ("r.png", red, "image/png"))])
    assert zero.status_code == 200, zero.text
    assert sorted(p["label"] for p in zero.json()["predictions"][0]["top_k"]) == \
        ["blue", "green", "red"]

    listed = api.get("/v1/adapters").json()["data"]
    assert {a["id"] for a in listed} == {adapter["id"], slow["adapter_id"]}
    assert api.delete(f"/v1/adapters/{slow['adapter_id']}").status_code == 204
    assert api.get(f"/v1/adapters/{slow['adapter_id']}").status_code == 404
    assert api.get("/healthz").json() == {"status": "ok", "version": clipfit.__version__}

    # the README's demo client, against this service, on a set it has not seen
    test_set = write_dataset(tmp_path / "test", per_class=10, seed=7)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_client.py"), "--url", str(api.base_url),
         "--train", str(colour_set), "--test", str(test_set), "--model", "clipfit-tiny",
         "--epochs", "40", "--lr", "0.1", "--batch-size", "16", "--batch", "16",
         "--api-key", api.headers["Authorization"].split()[1]],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "epoch  40/40" in out.stdout and "succeeded" in out.stdout
    zero = float(re.search(r"zero-shot accuracy \(clipfit-tiny\): ([\d.]+)%", out.stdout)[1])
    tuned = float(re.search(r"ClipFit adapter accuracy: +([\d.]+)%", out.stdout)[1])
    assert tuned >= 75 > zero, out.stdout
