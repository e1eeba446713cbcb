"""The fault suite's compose mode: the same promises as ``bench.faults``, checked on a stack
that ``docker compose`` runs (the project's docker-compose.yml, as an operator brings it up),
with the faults an operator meets: containers killed and restarted, Redis restarted with and
without its volume, PostgreSQL and the API restarted, while clients keep calling.

    python -m bench.faults --compose --api http://127.0.0.1:8000      # a stack already up
    bash bench/compose_check.sh      # the offline stand-in stack: build, up, this, down

The stack must allow the base model ``clipfit-tiny`` (CLIPFIT_BASE_MODELS). A key with the
admin scope comes from ``--key`` or is made with ``compose run --rm --no-deps api clipfit keys
create``. One line per scenario: trials, recovered, seconds (from the fault to the job's end),
the answers the clients saw meanwhile; exits 1 when a job is lost, stuck or finished twice
(more than one ``succeeded`` event or adapter), when an answer was a 5xx other than 503, or a
503 from ``/v1`` without ``Retry-After``.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx

from .faults import Api


class Stack(Api):
    """A compose project: ``docker compose -p PROJECT -f FILE ...`` run in ``directory``."""

    def __init__(self, data: Path, api: str, directory: Path, files: list[str], project: str,
                 key: str | None):
        self.data, self.directory, self.project = data, directory, project
        self.base = ["docker", "compose", "-p", project] + [
            arg for f in files for arg in ("-f", f)]
        self.connect(api, key or self.make_key())
        self.wait_ready(120)

    def compose(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run([*self.base, *args], cwd=self.directory, check=False,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"docker compose {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def make_key(self) -> str:
        out = self.compose("run", "--rm", "--no-deps", "api", "clipfit", "keys", "create",
                           "--tenant", "faults", "--scope", "admin")
        found = re.search(r"cfk_[A-Za-z0-9_-]+", out)
        if found is None:
            raise RuntimeError(f"no key in: {out[-500:]}")
        return found.group(0)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def started_at(self, service: str) -> str:
        return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}",
                               self.container(service)], check=True, capture_output=True,
                              text=True).stdout.strip()

    def crash(self, service: str, timeout: float = 120) -> None:
        """SIGKILL the service's processes from the host, as the kernel's OOM killer would
        (not ``docker kill``, which Docker counts as a wanted stop); then wait for the
        restart policy to bring the container back."""
        before = self.started_at(service)
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}",
                              self.container(service)], check=True, capture_output=True,
                             text=True).stdout.strip()
        os.kill(int(pid), 9)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                if self.started_at(service) != before:
                    return
            except subprocess.CalledProcessError:
                pass
        raise RuntimeError(f"{service} was not restarted by its restart policy")

    def close(self) -> None:
        self.client.close()


class Watcher:
    """Clients calling throughout: list jobs and adapters, read models, zero-shot classify,
    one after another, recording each answer (or ``conn`` when none came)."""

    ROUTES = ("/v1/jobs", "/v1/adapters", "/v1/models", "classify")

    def __init__(self, stack: Stack):
        with zipfile.ZipFile(stack.data) as z:
            image = base64.b64encode(z.read(min(z.namelist()))).decode()
        self.classify = {"base_model": "clipfit-tiny", "classes": ["red", "blue"],
                         "images": [image]}
        self.client = httpx.Client(base_url=stack.client.base_url, timeout=15,
                                   headers=dict(stack.client.headers))
        self.seen: list[tuple[str, str, bool]] = []  # (route, status, Retry-After given)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            for route in self.ROUTES:
                try:
                    r = (self.client.post("/v1/classify", json=self.classify)
                         if route == "classify" else self.client.get(route))
                    self.seen.append((route, str(r.status_code), "retry-after" in r.headers))
                except httpx.TransportError:
                    self.seen.append((route, "conn", False))
                    time.sleep(0.5)  # the API is away: do not spin
            time.sleep(0.1)

    def mark(self) -> int:
        return len(self.seen)

    def since(self, mark: int) -> tuple[str, list[str]]:
        """(answers seen since ``mark``, what was wrong with them)."""
        seen = self.seen[mark:]
        counts = Counter(status for _, status, _ in seen)
        bad = [f"{route} {status}" for route, status, _ in seen
               if status.startswith("5") and status != "503"]
        bad += [f"{route} 503 without Retry-After" for route, status, retry in seen
                if status == "503" and not retry]
        text = " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
        return text, sorted(set(bad))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        self.client.close()


def mid_job(s: Stack, job_id: str) -> None:
    if s.wait(job_id, lambda j: (j["progress"] or {}).get("epoch", 0) >= 2, 180) is None:
        raise RuntimeError(f"job {job_id} did not start training")


def settle_all(s: Stack, ids: list[str], timeout: float = 400) -> tuple[bool, str]:
    results = [s.settle(i, timeout) for i in ids]
    bad = [why for ok, why in results if not ok]
    return not bad, "; ".join(bad) or "; ".join(sorted({why for _, why in results}))


def scenario_worker_crash(s: Stack) -> tuple[bool, str, float]:
    """The worker's processes SIGKILLed mid-job; its restart policy brings it back, the
    reconciler gives the job a new attempt, which resumes."""
    job_id = s.submit(epochs=150)
    mid_job(s, job_id)
    t0 = time.monotonic()
    s.crash("worker")
    ok, why = s.settle(job_id, 400)
    return ok, why, time.monotonic() - t0


def scenario_worker_restart(s: Stack) -> tuple[bool, str, float]:
    """``docker compose restart worker`` mid-job: Celery's warm shutdown finishes the job
    within the stop grace period, then the worker starts again."""
    job_id = s.submit(epochs=40)
    mid_job(s, job_id)
    t0 = time.monotonic()
    s.compose("restart", "worker")
    ok, why = s.settle(job_id)
    return ok, why, time.monotonic() - t0


def scenario_worker_stop_short(s: Stack) -> tuple[bool, str, float]:
    """``docker compose restart -t 2 worker`` mid-job: SIGTERM, then SIGKILL after 2 s."""
    job_id = s.submit(epochs=150)
    mid_job(s, job_id)
    t0 = time.monotonic()
    s.compose("restart", "-t", "2", "worker")
    ok, why = s.settle(job_id, 400)
    return ok, why, time.monotonic() - t0


def _queued_then(s: Stack, fault) -> tuple[bool, str, float]:
    """The worker stopped, three jobs waiting in Redis, ``fault()``, the worker started."""
    s.compose("stop", "worker")
    try:
        ids = [s.submit(epochs=3) for _ in range(3)]
        fault()
        t0 = time.monotonic()
    finally:
        s.compose("start", "worker")
    ok, why = settle_all(s, ids)
    return ok, why, time.monotonic() - t0


def scenario_redis_restart(s: Stack) -> tuple[bool, str, float]:
    """Redis restarted with its volume (append-only file): the waiting messages survive."""
    return _queued_then(s, lambda: s.compose("restart", "redis"))


def scenario_redis_wiped(s: Stack) -> tuple[bool, str, float]:
    """Redis recreated without its volume: the waiting messages are gone; the reconciler
    sends the queued jobs again from the database."""
    def wipe() -> None:
        s.compose("rm", "--stop", "--force", "redis")
        subprocess.run(["docker", "volume", "rm", f"{s.project}_redisdata"], check=True,
                       capture_output=True)
        s.compose("up", "-d", "--no-deps", "--wait", "redis")
    return _queued_then(s, wipe)


def scenario_redis_down(s: Stack) -> tuple[bool, str, float]:
    """Redis stopped; a job submitted meanwhile is accepted (202) and the clients' reads and
    classify answer; Redis started again: the job runs. Seconds: from Redis' return."""
    s.compose("stop", "redis")
    try:
        job_id = s.submit(epochs=3)
        time.sleep(5)  # the clients call while Redis is away
        status = s.job(job_id)["status"]
    finally:
        s.compose("start", "redis")
    t0 = time.monotonic()
    ok, why = s.settle(job_id)
    if status != "queued":
        ok, why = False, f"job {status} during the outage; {why}"
    return ok, why, time.monotonic() - t0


def scenario_postgres_restart(s: Stack) -> tuple[bool, str, float]:
    job_id = s.submit(epochs=150)
    mid_job(s, job_id)
    t0 = time.monotonic()
    s.compose("restart", "postgres")
    ok, why = s.settle(job_id, 400)
    return ok, why, time.monotonic() - t0


def scenario_api_crash(s: Stack) -> tuple[bool, str, float]:
    """The API's processes SIGKILLed right after a 202; its restart policy brings it back."""
    job_id = s.submit(epochs=3)
    t0 = time.monotonic()
    s.crash("api")
    s.wait_ready(120)
    ok, why = s.settle(job_id)
    return ok, why, time.monotonic() - t0


def scenario_api_restart(s: Stack) -> tuple[bool, str, float]:
    """``docker compose restart api`` while a job trains."""
    job_id = s.submit(epochs=20)
    t0 = time.monotonic()
    s.compose("restart", "api")
    s.wait_ready(120)
    ok, why = s.settle(job_id)
    return ok, why, time.monotonic() - t0


SCENARIOS = {"worker-crash": scenario_worker_crash, "worker-restart": scenario_worker_restart,
             "worker-stop-2s": scenario_worker_stop_short,
             "redis-restart": scenario_redis_restart, "redis-wiped": scenario_redis_wiped,
             "redis-down": scenario_redis_down, "postgres-restart": scenario_postgres_restart,
             "api-crash": scenario_api_crash, "api-restart": scenario_api_restart}


def run(args, data: Path) -> int:
    stack = Stack(data, args.api, Path(args.compose_dir), args.compose_file or [
        "docker-compose.yml", "docker-compose.cpu.yml"], args.project, args.key)
    watcher = Watcher(stack)
    failed = False
    try:
        for name in args.only or list(SCENARIOS):
            seconds, recovered, notes, answers = [], 0, [], []
            for _ in range(args.trials):
                mark = watcher.mark()
                try:
                    ok, why, took = SCENARIOS[name](stack)
                except (RuntimeError, subprocess.SubprocessError, httpx.HTTPError,
                        AssertionError) as e:
                    ok, why, took = False, f"{type(e).__name__}: {e}"[:300], float("nan")
                seen, bad = watcher.since(mark)
                if bad:
                    ok, why = False, f"{why}; bad answers: {', '.join(bad)}"
                seconds.append(took)
                recovered += ok
                notes.append(why)
                answers.append(seen)
            failed |= recovered < args.trials
            print(f"{name:17s} trials {args.trials}  recovered {recovered}  seconds "
                  f"{' '.join(f'{t:.0f}' for t in seconds)}  answers {' | '.join(answers)}  "
                  f"{'; '.join(n for n in notes if n)}", flush=True)
    finally:
        watcher.close()
        stack.close()
    return 1 if failed else 0
