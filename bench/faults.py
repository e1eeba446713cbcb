"""Fault injection on the production topology: a PostgreSQL and a Redis of its own (private
ports, temporary directories, never the machine's shared servers), the API as compose runs it
(`clipfit serve --no-worker --no-migrate`) and `clipfit worker` processes, clipfit-tiny jobs.

    python -m bench.faults                      # every scenario, default recovery settings
    python -m bench.faults --only worker-kill --trials 2
    python -m bench.faults --compose ...        # on a docker compose stack: bench.compose_faults

Scenarios: a worker SIGKILLed mid-job; Redis restarted without its data while jobs wait; Redis
down while a job is submitted (202, reads and classify answer, the job runs once Redis is
back); a worker stopped with a short grace period (SIGTERM, then SIGKILL); PostgreSQL restarted while
a job trains and while clients call the API; the API SIGKILLed right after a 202; and a load
phase. One line per scenario (trials, recovered, seconds); exits 1 when a job is lost, stuck
or finished twice (more than one adapter or `succeeded` event), or when the API answered a
5xx other than 503 during an outage.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None) \
    if Path("/usr/lib/postgresql").exists() else None
FINISHED = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: run its tools as the postgres user when we are."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


class Postgres:
    def __init__(self, root: Path):
        self.dir, self.port = root / "pg", free_port()
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        as_postgres([str(PG_BIN / "initdb"), "-D", str(self.dir), "-A", "trust", "-U",
                     "postgres"])
        self.start()
        as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                     "-U", "postgres", "clipfit"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/clipfit"

    def start(self) -> None:
        options = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1"
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-l",
                     str(self.dir / "log"), "-o", options, "start"])

    def stop(self) -> None:
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-m", "fast", "stop"])


class Redis:
    def __init__(self, root: Path):
        self.dir, self.port = root / "redis", free_port()
        self.dir.mkdir()
        self.proc = None
        self.start()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:  # no persistence: a restart loses every message
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                              check=False, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Process:
    def __init__(self, argv: list[str], env: dict, log: Path):
        self.log = log
        self.handle = open(log, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, stdout=self.handle,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 20) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
        self.handle.close()


class Api:
    """A running service seen from outside: submit clipfit-tiny jobs, read them, and decide
    whether each ended exactly once."""

    data: Path
    client: httpx.Client

    def connect(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30,
                                   headers={"Authorization": f"Bearer {key}"})

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("API not ready")

    def submit(self, epochs: int) -> str:
        r = self.client.post("/v1/jobs", files={"dataset": ("d.zip", self.data.read_bytes())},
                             data={"base_model": "clipfit-tiny", "epochs": str(epochs),
                                   "lr": "0.1", "batch_size": "8", "val_fraction": "0.25"})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        """The job; ValueError for any other answer (an outage's 503: ``wait`` asks again)."""
        r = self.client.get(f"/v1/jobs/{job_id}")
        if r.status_code != 200:
            raise ValueError(f"GET /v1/jobs/{job_id}: {r.status_code}")
        return r.json()

    def wait(self, job_id: str, predicate, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
                if predicate(job):
                    return job
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.5)
        return None

    def settle(self, job_id: str, timeout: float = 300) -> tuple[bool, str]:
        """Wait for the job to finish, then ``outcome``; (False, 'stuck') if it does not."""
        if self.wait(job_id, lambda j: j["status"] in FINISHED, timeout) is None:
            try:  # where it stands, so a slow job is told apart from one nobody runs
                job = self.job(job_id)
                progress = job.get("progress") or {}
                return False, (f"stuck after {timeout:.0f} s: {job['status']}, attempt "
                               f"{job.get('attempts')}, epoch {progress.get('epoch', '-')} of "
                               f"{progress.get('epochs', '-')}")
            except (httpx.HTTPError, ValueError, KeyError):
                return False, f"stuck after {timeout:.0f} s (the API does not answer)"
        return self.outcome(job_id)

    def adapters(self) -> list[dict]:
        """Every adapter the key sees (all pages)."""
        rows, cursor = [], None
        while True:
            page = self.client.get("/v1/adapters", params={"limit": 200} | (
                {"cursor": cursor} if cursor else {})).json()
            rows += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return rows

    def outcome(self, job_id: str) -> tuple[bool, str]:
        """(finished exactly once and succeeded, why not, or how it recovered)."""
        events = []
        while True:  # every page of the job's events
            page = self.client.get(f"/v1/jobs/{job_id}/events", params={
                "limit": 1000, "cursor": events[-1]["id"] if events else 0}).json()["data"]
            events += page
            if len(page) < 1000:
                break
        kinds = [e["kind"] for e in events]
        job = self.job(job_id)
        if job["status"] != "succeeded":
            return False, f"status {job['status']}"
        if kinds.count("succeeded") != 1:
            return False, f"{kinds.count('succeeded')} succeeded events"
        stored = sum(a["job_id"] == job_id for a in self.adapters())
        if stored != 1:
            return False, f"{stored} adapters stored"
        resumed = [e["payload"]["from_epoch"] for e in events if e["kind"] == "resumed"]
        return True, (f"attempts {job['attempts']}" +
                      (f", resumed after epoch {resumed[-1]} of {job['progress']['epochs']}"
                       if resumed else ""))

class Cluster(Api):
    """PostgreSQL + Redis + API + workers, with the project's default recovery settings."""

    def __init__(self, root: Path, data: Path):
        self.root, self.data = root, data
        self.pg, self.redis = Postgres(root), Redis(root)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFIT_")} | {
            "CLIPFIT_DATABASE_URL": self.pg.url, "CLIPFIT_BROKER_URL": self.redis.url,
            "CLIPFIT_DATA_DIR": str(root / "data"), "CLIPFIT_BASE_MODELS": "clipfit-tiny",
            "CLIPFIT_DEVICE": "cpu", "CLIPFIT_RATE_LIMIT": "", "CLIPFIT_MAX_ACTIVE_JOBS": "0",
            "CLIPFIT_MAX_EPOCHS": "5000"}
        from registry import crud
        from registry.db import make_engine, session_scope
        from registry.migrate import upgrade

        upgrade(self.pg.url)
        engine = make_engine(self.pg.url)
        with session_scope(engine) as s:
            _, self.key = crud.create_key(s, tenant_id="default", scopes=["admin"])
        engine.dispose()
        self.port = free_port()
        self.api = None
        self.start_api()
        self.workers: list[Process] = []
        self.started = 0
        self.connect(f"http://127.0.0.1:{self.port}", self.key)
        self.wait_ready()

    def start_api(self) -> None:
        self.api = Process([sys.executable, "-m", "clipfit", "serve", "--no-worker",
                            "--no-migrate", "--port", str(self.port)], self.env,
                           self.root / "api.log")

    def start_worker(self) -> Process:
        self.started += 1
        worker = Process([sys.executable, "-m", "clipfit", "worker", "--concurrency", "1",
                          "--hostname", f"w{self.started}-{time.monotonic_ns()}@%h"],
                         self.env, self.root / f"worker{self.started}.log")
        self.workers.append(worker)
        deadline = time.monotonic() + 60
        while " ready." not in worker.log.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {worker.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(5)
        if self.api is not None:
            self.api.stop(5)
        self.client.close()
        self.redis.stop()
        self.pg.stop()


def colour_zip(root: Path) -> Path:
    from clipfit_core.synthetic import write_dataset

    folder = write_dataset(root / "colours", per_class=16, seed=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, path.relative_to(folder).as_posix())
    out = root / "colours.zip"
    out.write_bytes(buf.getvalue())
    return out


def mid_job(c: Cluster, job_id: str) -> None:
    if c.wait(job_id, lambda j: (j["progress"] or {}).get("epoch", 0) >= 3, 120) is None:
        raise RuntimeError(f"job {job_id} did not start training")


def _worker_dies(c: Cluster, stop) -> tuple[bool, str, float]:
    """A job's worker is stopped by ``stop`` mid-job; a fresh worker is started."""
    worker = c.workers[-1] if c.workers else c.start_worker()
    job_id = c.submit(epochs=300)
    mid_job(c, job_id)
    t0 = time.monotonic()
    stop(worker)
    c.workers.remove(worker)
    c.start_worker()
    ok, why = c.settle(job_id)
    return ok, why, time.monotonic() - t0


def scenario_worker_kill(c: Cluster) -> tuple[bool, str, float]:
    return _worker_dies(c, lambda worker: worker.signal(signal.SIGKILL))


def scenario_worker_sigterm(c: Cluster) -> tuple[bool, str, float]:
    # a stop grace period far shorter than the job, then SIGKILL
    return _worker_dies(c, lambda worker: worker.stop(grace=2))


def scenario_redis_restart(c: Cluster) -> tuple[bool, str, float]:
    for worker in list(c.workers):  # nobody consumes: the jobs wait in Redis
        worker.stop(5)
        c.workers.remove(worker)
    ids = [c.submit(epochs=5) for _ in range(3)]
    c.redis.stop()
    c.redis.start()  # without its data
    t0 = time.monotonic()
    c.start_worker()
    bad = [why for ok, why in map(c.settle, ids) if not ok]
    return not bad, "; ".join(bad), time.monotonic() - t0


def scenario_redis_down(c: Cluster) -> tuple[bool, str, float]:
    """Redis stopped; a job submitted meanwhile is accepted, reads and classify answer
    without a 5xx (only /readyz may say 503); Redis started again (empty): the job ends
    succeeded exactly once. Seconds: from Redis' return to the job's end."""
    if not c.workers:
        c.start_worker()
    with zipfile.ZipFile(c.data) as z:
        image = base64.b64encode(z.read(min(z.namelist()))).decode()
    c.redis.stop()
    try:
        job_id = c.submit(epochs=5)  # 202, or the scenario fails
        statuses = {url: c.client.get(url).status_code for url in (
            "/v1/jobs", f"/v1/jobs/{job_id}", "/v1/adapters", "/v1/models", "/v1/datasets")}
        statuses["classify"] = c.client.post("/v1/classify", json={
            "base_model": "clipfit-tiny", "classes": ["red", "blue"], "images": [image]}
            ).status_code
        status = c.job(job_id)["status"]
    finally:
        c.redis.start()
    t0 = time.monotonic()
    ok, why = c.settle(job_id)
    bad = {url: code for url, code in statuses.items() if code != 200}
    if bad or status != "queued":
        ok, why = False, f"during the outage: {bad or ''} job {status}; " + why
    return ok, why, time.monotonic() - t0


def scenario_postgres_restart(c: Cluster) -> tuple[bool, str, float]:
    if not c.workers:
        c.start_worker()
    job_id = c.submit(epochs=300)
    mid_job(c, job_id)
    statuses: list[int] = []
    c.pg.stop()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:  # clients keep calling during the outage
        try:
            statuses.append(c.client.get("/v1/jobs").status_code)
        except httpx.TransportError:
            statuses.append(0)
        time.sleep(0.25)
    c.pg.start()
    ok, why = c.settle(job_id)
    server_errors = [s for s in statuses if s >= 500 and s != 503]
    if server_errors:
        ok, why = False, f"{len(server_errors)} answers {sorted(set(server_errors))} besides 503"
    return ok, why + f" (outage answers: {sorted(set(statuses))})", time.monotonic() - t0


def scenario_api_kill(c: Cluster) -> tuple[bool, str, float]:
    if not c.workers:
        c.start_worker()
    job_id = c.submit(epochs=5)
    c.api.signal(signal.SIGKILL)  # right after the 202
    c.api.proc.wait(10)
    t0 = time.monotonic()
    c.start_api()
    c.wait_ready()
    ok, why = c.settle(job_id)
    return ok, why, time.monotonic() - t0


def scenario_load(c: Cluster) -> tuple[bool, str, float]:
    if not c.workers:
        c.start_worker()
    t0 = time.monotonic()
    ids, statuses = [], []
    while time.monotonic() - t0 < 30:
        if len(ids) < 5:
            ids.append(c.submit(epochs=3))
        for url in ("/v1/jobs", "/v1/adapters", "/readyz"):
            statuses.append(c.client.get(url).status_code)
    bad = [why for ok, why in map(c.settle, ids) if not ok]
    errors = [s for s in statuses if s >= 500]
    if errors:
        bad.append(f"{len(errors)} 5xx")
    return not bad, f"{len(statuses)} requests; " + "; ".join(bad), time.monotonic() - t0


SCENARIOS = {"worker-kill": scenario_worker_kill, "worker-sigterm": scenario_worker_sigterm,
             "redis-restart": scenario_redis_restart, "redis-down": scenario_redis_down,
             "postgres-restart": scenario_postgres_restart, "api-kill": scenario_api_kill,
             "load": scenario_load}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--only", action="append", help="a scenario (repeatable): "
                        f"{', '.join(SCENARIOS)}; with --compose, one of bench.compose_faults")
    parser.add_argument("--trials", type=int, default=1)
    compose = parser.add_argument_group(
        "compose mode", "the scenarios of bench.compose_faults on a running docker compose stack")
    compose.add_argument("--compose", action="store_true", help="run the compose scenarios")
    compose.add_argument("--api", default="http://127.0.0.1:8000", help="the stack's API")
    compose.add_argument("--compose-dir", default=".", help="where to run docker compose")
    compose.add_argument("--compose-file", action="append",
                         help="compose files (default: docker-compose.yml "
                              "docker-compose.cpu.yml)")
    compose.add_argument("--project", default="clipfit", help="the compose project name")
    compose.add_argument("--key", default=os.environ.get("CLIPFIT_FAULTS_KEY"),
                         help="an admin key (default: made with compose run ... keys create)")
    args = parser.parse_args()
    names: dict = SCENARIOS
    if args.compose:
        from . import compose_faults

        names = compose_faults.SCENARIOS
    if set(args.only or ()) - set(names):
        parser.error(f"--only takes {', '.join(names)}")
    if args.compose:
        root = Path(tempfile.mkdtemp(prefix="clipfit-compose-faults-"))
        return compose_faults.run(args, colour_zip(root))
    if PG_BIN is None or shutil.which("redis-server") is None:
        print("needs PostgreSQL's server binaries (apt-get install postgresql) and "
              "redis-server", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="clipfit-faults-"))
    os.chmod(root, 0o755)
    failed = False
    cluster = Cluster(root, colour_zip(root))
    try:
        cluster.start_worker()
        for name in args.only or list(SCENARIOS):
            seconds, recovered, notes = [], 0, []
            for _ in range(args.trials):
                ok, why, took = SCENARIOS[name](cluster)
                seconds.append(took)
                recovered += ok
                if why:
                    notes.append(why)
            failed |= recovered < args.trials
            print(f"{name:17s} trials {args.trials}  recovered {recovered}  seconds "
                  f"{' '.join(f'{s:.0f}' for s in seconds)}  {'; '.join(notes)}", flush=True)
    finally:
        cluster.close()
        print(f"logs in {root}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
