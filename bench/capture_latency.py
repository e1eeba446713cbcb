"""Classification latency with capture on against off, measured side by side in one run.

    python -m bench.capture_latency --out results/capture     # clipfit-tiny, 8 clients, 3 rounds
    python -m bench.capture_latency --seconds 8 --warmup 1 --rounds 8 --out DIR   # as documented
    python -m bench.capture_latency --model ViT-B-32 --clients 8 --seconds 10 --rounds 6 --out DIR
    python -m bench.capture_latency --database-url postgresql+psycopg://... --out DIR

Random weights (the spec names only an architecture). ``clipfit serve --no-worker`` runs as a
subprocess on a free port (auth off, no rate limit, open metrics; SQLite in a temp folder, or
``--database-url``), with four adapters written into its registry before it starts: the same
random delta four times, unnamed, so each is a lineage of its own and only capture differs:

- ``off``: no capture settings (the lineage's cached "off");
- ``all``: capture on, ``sample_rate`` 1.0: every answer is captured, the writer's worst case;
  the caps are set at their maxima (checked on every write, never reached in a run);
- ``none``: capture on, ``below_confidence`` 0.05: with 10 classes the top probability is never
  below 0.1, so the rules are read from their cache and checked per image and nothing is kept;
- ``control``: no capture settings, like ``off``: its ratio to ``off`` is what "no difference"
  looks like on this machine with this protocol (an A/A comparison).

The rules are set through ``PUT /v1/adapters/{id}/capture``. Each mode runs the same load:
``--clients`` threads, each with its own connection, 1 image per request, back to back, for
``--warmup`` then ``--seconds`` seconds; every image is a new file (a 64x64 PNG with a text
chunk naming the request), so every capture stores a new blob. The modes run interleaved,
``--rounds`` times, the order rotated each round (off, all, none, control; all, none, control,
off; ...): a slow minute of a shared machine falls on all of them. After each phase the bench
waits until the writer has written or skipped every capture offered so far (``/metrics``) and
records how long that took, so the next phase starts with an empty queue. Latency p50/p95/p99
over the requests answered inside the window; throughput = those requests / window; the
server's CPU seconds (all its threads) from the phase's start until the writer caught up, per
request answered. Every answer is checked (200, one prediction).

Reported per round and pooled over the rounds: each mode's figures and the ratio of each
capture mode to ``off``: pooled, per round (against the ``off`` of the same round) and the
median of the rounds' ratios (the figure to trust on a noisy machine); the spread of ``off``
itself between rounds (how much the machine alone moves the figures); the captures offered,
written and skipped (by reason, from ``/metrics``) and those found in the database per lineage.
The run fails (exit 1, after writing the JSON) unless ``all`` wrote captures, the writer
settled (wrote, or skipped and counted) every one ``all`` offered, the database holds every
written one, and the other modes stored none. Skips are reported, not failed: a writer
that cannot keep up drops captures (``queue_full``) rather than slow classify down.
Results: ``OUT/capture_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import signal
import struct
import sys
import tempfile
import threading
import time
import zlib
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.classify_throughput import (
    CpuMeter,
    Server,
    cpu_seconds,
    end_clients,
    free_port,
    percentile,
)
from bench.serve_speed import CLASSES, TEMPLATE, check, make_pngs, random_deltas
from clipfit_core.data import Sample
from clipfit_core.models import create_base_model
from service.capture_rules import MAX_PER_DAY, MAX_PER_HOUR

MODES = ("off", "all", "none", "control")
COMPARED = MODES[1:]  # each against off
NEVER = 0.05  # below 1 / len(CLASSES): no top probability of 10 classes is below it
assert NEVER < 1 / len(CLASSES)
CAPS = {"max_per_hour": MAX_PER_HOUR, "max_per_day": MAX_PER_DAY,
        "retention_days": 1}  # a given --database-url sweeps them after a day
RULES = {"all": {"sample_rate": 1.0} | CAPS, "none": {"below_confidence": NEVER} | CAPS}
SENTINEL = b"\x00clipfit-bench-image\x00"


# ---------------------------------------------------------------- inputs


def tagged(png: bytes, tag: bytes) -> bytes:
    """The PNG with a text chunk holding ``tag`` before its IEND chunk: the same pixels in new
    bytes, so that a capture of it is a new blob."""
    data = b"clipfit-bench\x00" + tag
    chunk = (struct.pack(">I", len(data)) + b"tEXt" + data
             + struct.pack(">I", zlib.crc32(b"tEXt" + data)))
    return png[:-12] + chunk + png[-12:]  # the last 12 bytes are the IEND chunk


def body_around(adapter_id: str) -> tuple[bytes, bytes, dict]:
    """A classify multipart body of one image, split where the image goes: (head, tail,
    headers). Built once per mode, so that a client spends microseconds per request on it."""
    r = httpx.Request("POST", "http://x/v1/classify", data={"adapter_id": adapter_id},
                      files=[("images", ("image.png", SENTINEL, "image/png"))])
    head, tail = r.read().split(SENTINEL)
    return head, tail, {"content-type": r.headers["content-type"]}


def store_adapters(settings, model: str, delta, png: bytes, n: int) -> list[str]:
    """``n`` unnamed adapters of the default tenant holding the same ``delta``."""
    from registry import crud
    from registry.db import get_engine, session_scope
    from registry.migrate import upgrade
    from registry.models import DEFAULT_TENANT

    upgrade(settings.sqlalchemy_url)
    ids = []
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        for _ in range(n):
            job = crud.create_job(s, tenant_id=DEFAULT_TENANT, classnames=CLASSES,
                                  images=[Sample(png, 0, "x.png")], base_model=model,
                                  templates=[TEMPLATE], hyperparameters={})
            crud.mark_running(s, job_id=job.id)
            ids.append(crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                          config=delta.config_dict(), metrics={}).id)
    return ids


def captures_in_database(settings, lineages: dict[str, str]) -> dict[str, int]:
    """Captures stored per mode (each mode's adapter is a lineage of its own)."""
    from registry import captures
    from registry.db import get_engine, session_scope
    from registry.models import DEFAULT_TENANT, utcnow

    since = utcnow() - timedelta(days=365)  # as the writer's caps count them
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        return {mode: captures.count_captures_since(s, tenant_id=DEFAULT_TENANT,
                                                    lineage=lineage, since=since)
                for mode, lineage in lineages.items()}


# ---------------------------------------------------------------- the server's counters


def writer_counts(server: Server) -> dict[str, int]:
    """The capture writer's counters from /metrics: ``written`` and each skip reason."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).raise_for_status().text
    counts = {}
    for line in text.splitlines():
        if line.startswith("clipfit_captures_written_total "):
            counts["written"] = int(float(line.rsplit(" ", 1)[1]))
        elif m := re.match(r'clipfit_captures_skipped_total\{reason="(\w+)"\} (\S+)', line):
            counts[m[1]] = int(float(m[2]))
    if "written" not in counts:
        raise RuntimeError("/metrics has no clipfit_captures_written_total")
    return counts


def settled(counts: dict[str, int]) -> int:
    """Captures the writer is done with: written or skipped."""
    return sum(counts.values())


def wait_for_writer(server: Server, offered: int, timeout: float = 300) -> float:
    """Seconds until the writer has written or skipped ``offered`` captures."""
    start = time.perf_counter()
    while settled(writer_counts(server)) < offered:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"the writer settled {settled(writer_counts(server))} of "
                               f"{offered} captures in {timeout:.0f} s")
        time.sleep(0.2)  # each look is a /metrics scrape: server CPU
    return time.perf_counter() - start


# ---------------------------------------------------------------- load


def phase(server: Server, body: tuple[bytes, bytes, dict], png: bytes, tag: str, clients: int,
          warmup: float, seconds: float) -> tuple[dict, list[float], int]:
    """``clients`` threads post one new image per request back to back: (figures over the
    window, the latencies of the requests answered inside it, every request answered)."""
    head, tail, headers = body
    records: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    answered = [0] * clients
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            try:
                i = 0
                while not stop.is_set():
                    content = head + tagged(png, f"{tag}-{k}-{i}".encode()) + tail
                    start = time.perf_counter()
                    r = c.post("/v1/classify", content=content, headers=headers)
                    end = time.perf_counter()
                    check(r, 1)
                    answered[k] += 1
                    records[k].append((start, end))
                    i += 1
            except BaseException as e:  # noqa: BLE001 (re-raised below)
                errors.append(e)
                stop.set()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(warmup)
    meter = CpuMeter(server.proc.pid).start()
    t0 = time.perf_counter()
    stop.wait(seconds)
    t1 = time.perf_counter()
    cpu = meter.stop()
    end_clients(stop, threads, errors)
    elapsed = time.perf_counter() - began  # warmup, window and the last answers
    latencies = [e - s for rec in records for s, e in rec if t0 <= e <= t1]
    return (figures(latencies, t1 - t0) | {"elapsed_s": round(elapsed, 2), "cpu_cores": cpu},
            latencies, sum(answered))


def warm(server: Server, body: tuple[bytes, bytes, dict], png: bytes, tag: str,
         requests: int = 3) -> int:
    """A few requests one after another; how many were answered."""
    head, tail, headers = body
    with httpx.Client(base_url=server.url, timeout=300) as c:
        for i in range(requests):
            check(c.post("/v1/classify", content=head + tagged(png, f"{tag}-{i}".encode())
                         + tail, headers=headers), 1)
    return requests


def figures(latencies: list[float], window: float) -> dict:
    return {"window_s": round(window, 2), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / window, 2),
            "latency_p50_ms": round(percentile(latencies, 50) * 1e3, 2),
            "latency_p95_ms": round(percentile(latencies, 95) * 1e3, 2),
            "latency_p99_ms": round(percentile(latencies, 99) * 1e3, 2),
            "latency_mean_ms": round(sum(latencies) / len(latencies) * 1e3, 2)
            if latencies else None}


RATIO_KEYS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "requests_per_s",
              "server_cpu_ms_per_request")


def short(key: str) -> str:
    return {"server_cpu_ms_per_request": "cpu_per_request"}.get(
        key, key.removeprefix("latency_").removesuffix("_ms"))


def ratios(row: dict, off: dict, keys: tuple[str, ...] = RATIO_KEYS) -> dict:
    """A capture mode against off: > 1 is slower for latency, faster for requests_per_s, more
    server CPU per request for cpu_per_request."""
    return {short(k): round(row[k] / off[k], 3) if row[k] and off[k] else None
            for k in keys}  # None: a window too short to answer any request


# ---------------------------------------------------------------- main


def measure(server: Server, ids: dict[str, str], pngs: list[bytes], args) -> dict:
    """The modes, ``args.rounds`` times interleaved, on a running server whose
    adapters are ``ids`` (by mode)."""
    for mode, rules in RULES.items():
        r = httpx.put(f"{server.url}/v1/adapters/{ids[mode]}/capture", json=rules, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"PUT capture ({mode}) answered {r.status_code}: {r.text[:300]}")
    bodies = {mode: body_around(ids[mode]) for mode in MODES}
    run_id = secrets.token_hex(4)  # a given database keeps earlier runs' images
    offered = 0  # captures the "all" mode offered the writer: one per answer
    for mode in MODES:  # untimed: each adapter's delta and text features loaded
        answered = warm(server, bodies[mode], pngs[0], f"{run_id}-w{mode}")
        offered += answered if mode == "all" else 0
    warmup_drain = wait_for_writer(server, offered)
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}  # every round's
    for round_ in range(1, args.rounds + 1):
        for mode in rotated(MODES, round_ - 1):
            before, cpu_before = writer_counts(server), cpu_seconds(server.proc.pid)
            row, window, answered = phase(server, bodies[mode], pngs[round_ % len(pngs)],
                                          f"{run_id}-{round_}{mode}", args.clients,
                                          args.warmup, args.seconds)
            offered += answered if mode == "all" else 0
            row["drain_s"] = round(wait_for_writer(server, offered), 2)
            after, cpu = writer_counts(server), cpu_seconds(server.proc.pid) - cpu_before
            row["answered"] = answered
            # the server's CPU (all its threads: HTTP, decoding, model, capture writer) from the
            # phase's start until the writer caught up, per request answered; it rises too on a
            # busy machine (threads spinning while they wait), so compare it within a round
            row["server_cpu_s"] = round(cpu, 2)
            row["server_cpu_ms_per_request"] = round(cpu / answered * 1e3, 2)
            row["writer"] = {k: after[k] - before.get(k, 0) for k in after}
            # the writer's own pace: what it wrote from the phase's start until it caught up
            row["written_per_s"] = round(row["writer"]["written"]
                                         / (row["elapsed_s"] + row["drain_s"]), 1)
            rows[mode].append(row)
            latencies[mode] += window
            print(f"round {round_} {mode:>7}: {compact(row)}", flush=True)
    return {"rows": rows, "latencies": latencies, "offered": offered,
            "warmup_drain_s": round(warmup_drain, 2), "counts": writer_counts(server)}


def rotated(modes: tuple[str, ...], by: int) -> tuple[str, ...]:
    """The modes' order in a round: off, all, none, control; then all, none, control, off;
    ... so that a load that rises or falls during a round does not always fall on the same
    mode."""
    by %= len(modes)
    return modes[by:] + modes[:by]


def report(results: dict, measured: dict, stored: dict[str, int]) -> dict:
    """Per mode, pooled and per round; the ratios to off; off's own spread; the captures."""
    rows, counts, offered = measured["rows"], measured["counts"], measured["offered"]
    results["modes"] = {
        mode: {"pooled": figures(measured["latencies"][mode],
                                 sum(r["window_s"] for r in rows[mode]))  # windows as one
               | {"server_cpu_ms_per_request": round(
                   sum(r["server_cpu_s"] for r in rows[mode])
                   / sum(r["answered"] for r in rows[mode]) * 1e3, 2)},
               "rounds": rows[mode]} for mode in MODES}
    off = results["modes"]["off"]["pooled"]
    results["ratios"] = {}
    for mode in COMPARED:
        per_round = [ratios(row, row_off) for row, row_off in zip(rows[mode], rows["off"])]
        results["ratios"][mode] = {
            "pooled": ratios(results["modes"][mode]["pooled"], off),
            # each round against the off of the same round: robust to a slow minute
            "median_of_rounds": {k: round(float(np.median([r[k] for r in per_round
                                                            if r[k] is not None] or [np.nan])), 3)
                                 for k in per_round[0]},
            "rounds": per_round}
    results["off_spread"] = {  # the machine alone: off's highest round over its lowest
        short(k): ratios({k: max(r[k] for r in rows["off"])},
                         {k: min(r[k] for r in rows["off"])}, keys=(k,))[short(k)]
        for k in RATIO_KEYS}
    skipped = {k: v for k, v in counts.items() if k != "written"}
    results["captures"] = {"offered": offered, "written": counts["written"],
                           "skipped": skipped, "in_database": stored,
                           "warmup_drain_s": measured["warmup_drain_s"]}
    results["checks"] = {
        "all: captures written": counts["written"] > 0,
        "all: every offered capture written or skipped": settled(counts) == offered,
        "all: the database holds every written capture": stored["all"] == counts["written"],
        **{f"{mode}: none stored": stored[mode] == 0 for mode in MODES if mode != "all"}}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capture_latency",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", default="clipfit-tiny", help="architecture (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="folder for capture_latency.json")
    p.add_argument("--database-url", default="",
                   help="the server's database (default: SQLite in a temp folder)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3,
                   help="run the modes this many times, interleaved")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    from registry.db import get_engine
    from registry.settings import Settings

    print(f"loading {args.model} (random weights) ...", flush=True)
    base = create_base_model(args.model, device="cpu")
    delta = random_deltas(base, 1)[0]
    del base  # the server loads its own
    pngs = make_pngs(len(CLASSES))
    results: dict = {"model": args.model, "device": args.device, "clients": args.clients,
                     "images_per_request": 1, "max_batch": args.max_batch,
                     "max_wait_ms": args.max_wait_ms, "warmup_s": args.warmup,
                     "seconds": args.seconds, "rounds": args.rounds,
                     "database": "given" if args.database_url else "sqlite",
                     "rules": RULES, "cpus": os.cpu_count(),
                     "python": platform.python_version(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="clipfit-capture-latency-") as tmp:
        tmp = Path(tmp)
        settings = Settings(data_dir=tmp / "data", database_url=args.database_url)
        (tmp / "data").mkdir()
        ids = dict(zip(MODES, store_adapters(settings, args.model, delta, pngs[0], len(MODES))))
        env = {"CLIPFIT_AUTH": "false", "CLIPFIT_RATE_LIMIT": "",
               "CLIPFIT_OPEN_METRICS": "true", "CLIPFIT_BATCH_MAX_SIZE": str(args.max_batch),
               "CLIPFIT_BATCH_MAX_WAIT_MS": str(args.max_wait_ms),
               "CLIPFIT_BATCH_QUEUE_IMAGES": "100000"}
        if args.database_url:
            env["CLIPFIT_DATABASE_URL"] = args.database_url
        server = Server(args.model, args.device, tmp, free_port(), extra_env=env,
                        extra_args=["--no-worker"])
        try:
            server.wait_ready(600)
            measured = measure(server, ids, pngs, args)
        finally:
            code = server.stop()
            if code not in (0, -15, None):
                print(f"server exited with {code}:\n{server.log_tail()}", flush=True)
        stored = captures_in_database(settings, ids)
        get_engine(settings.sqlalchemy_url).dispose()
    report(results, measured, stored)
    (args.out / "capture_latency.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0 if all(results["checks"].values()) else 1


def compact(row: dict) -> str:
    return (f"{row['requests_per_s']} req/s, p50 {row['latency_p50_ms']} ms, p95 "
            f"{row['latency_p95_ms']} ms, p99 {row['latency_p99_ms']} ms, writer "
            f"{row['writer']} ({row['written_per_s']}/s), caught up {row['drain_s']} s after, "
            f"cpu {row['cpu_cores']}")


def print_table(r: dict) -> None:
    print(f"\ncapture_latency: {r['model']} on {r['device']}, {r['clients']} clients x 1 "
          f"image, {r['rounds']} rounds x {r['seconds']} s per mode, {r['database']}")
    print(f"{'mode':6}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'server CPU ms/request':>23}  (pooled)")
    for mode in MODES:
        row = r["modes"][mode]["pooled"]
        print(f"{mode:6}{row['requests_per_s']:>9}{row['latency_p50_ms']:>9}"
              f"{row['latency_p95_ms']:>9}{row['latency_p99_ms']:>9}"
              f"{row['server_cpu_ms_per_request']:>23}")
    keys = list(r["off_spread"])
    print(f"ratio to off ({', '.join(keys)}):")
    for mode, found in r["ratios"].items():
        for how in ("pooled", "median_of_rounds"):
            print(f"  {mode:8}{how:18}" + ", ".join(str(found[how][k]) for k in keys))
        print(f"  {mode:8}{'rounds':18}" + " | ".join(
            ", ".join(str(x[k]) for k in keys) for x in found["rounds"]))
    print("  off's own spread, highest round over lowest: "
          + ", ".join(str(r["off_spread"][k]) for k in keys))
    c = r["captures"]
    print(f"captures: offered {c['offered']}, written {c['written']}, skipped {c['skipped']}, "
          f"in the database {c['in_database']}")
    print("checks: " + ", ".join(f"{k}: {'ok' if ok else 'FAILED'}"
                                 for k, ok in r["checks"].items()))


if __name__ == "__main__":
    # SIGTERM (a timeout) unwinds like Ctrl-C, so that the server subprocess is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
