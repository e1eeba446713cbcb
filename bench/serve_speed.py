"""Serving speed of the batching engine against the limit and against the path before it.

    python bench/serve_speed.py --model ViT-B-32 --out results/serve     # this machine's CPU
    python bench/serve_speed.py --model ViT-B-16 --device cuda --max-batch 128 --out DIR

Random weights (the spec names only an architecture): speed does not depend on them. One run
measures, in this order, with the same synthetic images (64x64 PNG), classes and templates:

(a) the limit: raw ``model.encode_image`` at the max batch size (``--max-batch``) on the same
    device and precision as the engine, from preprocessed pixels; measured before and after
    the rest, the faster of the two is the reference (load from elsewhere only lowers it);
(b) ``--clients`` concurrent clients, 1 image per request, all for one adapter;
(c) the same, but client k uses adapter k (``--clients`` different adapters) and every 8th
    request of each client is zero-shot, so batches mix many deltas;
(d) the traffic of (c) through the path before batching: ``CLIPFIT_BATCHING=false``, one
    request at a time with its delta swapped into the model;
(e) ``--big-clients`` clients x ``--big-batch`` images per request, one adapter, through the
    batching engine, and (e0) the same through the path before batching ("today").

(b)-(e) run twice: through the real HTTP API of ``clipfit serve`` (a subprocess on a free port,
SQLite, no worker, auth off, no rate limit; the adapters are random deltas written into its
registry before it starts), and in-process through ``api.inference.InferenceEngine.classify``
(no HTTP, images decoded once; ``--skip-http`` or ``--skip-inprocess`` runs one of the two).
Each phase: every client first sends one request per adapter it uses, untimed (loading
deltas and text features), then ``--warmup`` seconds, then a ``--seconds`` window
(``--big-seconds`` for (e), (e0)). Throughput ("img/s") counts the images the model's
inference thread finished inside the window (from ``/metrics`` over HTTP); beside it,
"answered" counts the images of requests answered inside it; also the mean batch and the
share of the window the model was busy. Latency p50/p99 over the answered requests. Every
answer is checked (HTTP 200, one prediction per image): an error, or a request still
unanswered 5 minutes after the window, stops the run. With ``--rounds R`` every phase runs R
times, interleaved (b, c, e, b, c, e, ...), and the median round is reported (all rounds are
kept in the JSON). Results: ``OUT/serve_speed.json``.

Goals (issue 10, on a CPU): c >= 0.8 a, c >= 0.9 b, c >= 1.5 d, e not slower than e0.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: python bench/serve_speed.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.classify_throughput import CpuMeter, Server, end_clients, free_port, percentile
from clipfit_core.data import Sample, open_image
from clipfit_core.delta import Delta, DeltaConfig, extract_delta
from clipfit_core.models import create_base_model, resolve_device
from clipfit_core.serving import inference_autocast
from clipfit_core.synthetic import COLOURS, render

CLASSES = [*COLOURS, "brown", "grey"][:10]  # 10 classes, as in the baseline
TEMPLATE = "a photo of a {}."


# ---------------------------------------------------------------- inputs


def make_pngs(n: int, size: int = 64, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    out = []
    for i in range(n):
        buf = io.BytesIO()
        render(colours[i % len(colours)], size, rng).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def random_deltas(base, n: int) -> list[Delta]:
    g = torch.Generator().manual_seed(1)
    values = extract_delta(base.model)
    return [Delta({k: v * (1 + 0.05 * torch.randn(v.shape, generator=g))
                   for k, v in values.items()},
                  DeltaConfig(base_model=base.spec, base_fingerprint=base.fingerprint,
                              classnames=CLASSES, templates=[TEMPLATE])) for _ in range(n)]


def store_adapters(data_dir: Path, model: str, deltas: list[Delta], png: bytes) -> list[str]:
    """The deltas as adapters of the default tenant in a fresh SQLite registry."""
    from registry import crud
    from registry.db import get_engine, session_scope
    from registry.migrate import upgrade
    from registry.models import DEFAULT_TENANT
    from registry.settings import Settings

    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)
    ids = []
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        for delta in deltas:
            job = crud.create_job(s, tenant_id=DEFAULT_TENANT, classnames=CLASSES,
                                  images=[Sample(png, 0, "x.png")], base_model=model,
                                  templates=[TEMPLATE], hyperparameters={})
            crud.mark_running(s, job_id=job.id)
            ids.append(crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                          config=delta.config_dict(), metrics={}).id)
    get_engine(settings.sqlalchemy_url).dispose()
    return ids


# ---------------------------------------------------------------- traffic


def traffic(kind: str, clients: int, n_images: int, adapters: list) -> list[list[dict]]:
    """Per client, a cycle of requests: {"images": [indices], "adapter": id|None}."""
    plans = []
    for k in range(clients):
        plan = []
        for i in range(8):
            first = (k * 8 + i) * n_images
            images = [(first + j) % 256 for j in range(n_images)]
            if kind == "mixed":
                adapter = None if i == 7 else adapters[k % len(adapters)]
            else:
                adapter = adapters[0]
            plan.append({"images": images, "adapter": adapter})
        plans.append(plan)
    return plans


def rounds(todo: dict, n: int):
    """(round, phase) in the order b, c, e, b, c, e, ...: rounds interleaved, so that a slow
    minute of the machine does not fall on one phase only."""
    for r in range(1, n + 1):
        for item in todo.items():
            yield r, item


def warmup_requests(plan: list[dict]) -> list[dict]:
    """One request per adapter (or zero-shot) the plan uses: loads deltas, text features."""
    seen: dict = {}
    for req in plan:
        seen.setdefault(req["adapter"], req)
    return list(seen.values())


def summarize(records: list[list[tuple[float, float, int]]], t0: float, t1: float,
              counts0: tuple[float, float, float], counts1: tuple[float, float, float]
              ) -> dict:
    """Throughput two ways: images of the requests answered inside the window, and images the
    model's inference thread finished inside it (``counts``: rows, batches, busy seconds at
    t0 and t1; not quantized by long requests). Latency over the answered requests."""
    done = [(s, e, n) for rec in records for s, e, n in rec if t0 <= e <= t1]
    window = t1 - t0
    lat = [e - s for s, e, _ in done]
    images = sum(n for _, _, n in done)
    rows, batches, busy = (b - a for a, b in zip(counts0, counts1))
    rows = int(rows)
    return {"window_s": round(window, 2), "requests": len(done), "images": images,
            "answered_images_per_s": round(images / window, 2),
            "images_per_s": round(rows / window, 2),
            "batches": int(batches),
            "mean_batch": round(rows / batches, 1) if batches else None,
            "model_busy": round(busy / window, 3),  # share of the window in forward passes
            "latency_p50_ms": round(percentile(lat, 50) * 1e3, 1),
            "latency_p99_ms": round(percentile(lat, 99) * 1e3, 1)}


def http_phase(server: Server, plans: list[list[dict]], pngs: list[bytes], warmup: float,
               seconds: float) -> dict:
    """One thread and connection per client, requests back to back."""
    def body(req: dict) -> tuple[bytes, dict]:
        files = [("images", (f"{i}.png", pngs[i], "image/png")) for i in req["images"]]
        data = {"adapter_id": req["adapter"]} if req["adapter"] else \
            {"base_model": server.model, "classes": ",".join(CLASSES)}
        r = httpx.Request("POST", "http://x/v1/classify", files=files,
                          data=data | {"template": TEMPLATE, "top_k": "3"})
        return r.read(), {"content-type": r.headers["content-type"]}

    bodies = [[(*body(req), len(req["images"])) for req in plan] for plan in plans]
    records: list[list[tuple[float, float, int]]] = [[] for _ in plans]
    errors: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Barrier(len(plans) + 1)

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            try:
                for req in warmup_requests(plans[k]):  # untimed: deltas, text features
                    content, headers, n = bodies[k][plans[k].index(req)]
                    check(c.post("/v1/classify", content=content, headers=headers), n)
                ready.wait()
                i = 0
                while not stop.is_set():
                    content, headers, n = bodies[k][i % len(bodies[k])]
                    start = time.perf_counter()
                    r = c.post("/v1/classify", content=content, headers=headers)
                    end = time.perf_counter()
                    check(r, n)
                    records[k].append((start, end, n))
                    i += 1
            except BaseException as e:  # noqa: BLE001 (re-raised below)
                errors.append(e)
                stop.set()
                ready.abort()

    threads = [threading.Thread(target=client, args=(k,), daemon=True)
               for k in range(len(plans))]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    time.sleep(warmup)
    meter = CpuMeter(server.proc.pid).start()
    counts0 = metrics_counts(server)
    t0 = time.perf_counter()
    stop.wait(seconds)
    t1 = time.perf_counter()
    counts1 = metrics_counts(server)
    cpu = meter.stop()
    end_clients(stop, threads, errors)
    return summarize(records, t0, t1, counts0, counts1) | {"cpu_cores": cpu}


def metrics_counts(server: Server) -> tuple[float, float, float]:
    """(rows, batches, busy seconds) of the server's inference thread, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).raise_for_status().text
    values = {}
    for line in text.splitlines():
        for name in ("rows", "batches", "busy_seconds"):
            if line.startswith(f'clipfit_inference_{name}{{model="{server.model}"}}'):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("rows", 0), values.get("batches", 0), values.get("busy_seconds", 0)


def check(r: httpx.Response, n: int) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"POST /v1/classify answered {r.status_code}: {r.text[:300]}")
    if len(r.json()["predictions"]) != n:
        raise RuntimeError(f"{len(r.json()['predictions'])} predictions for {n} images")


def inprocess_phase(engine, model: str, plans: list[list[dict]], images: list,
                    deltas: dict, warmup: float, seconds: float) -> dict:
    """The engine's own ``classify`` (what the route awaits), one task per client."""
    records: list[list[tuple[float, float, int]]] = [[] for _ in plans]

    async def one(req: dict) -> int:
        preds = await engine.classify(model, [images[i] for i in req["images"]], CLASSES,
                                      [TEMPLATE], deltas.get(req["adapter"]), 3)
        if len(preds) != len(req["images"]):
            raise RuntimeError("lost rows")
        return len(preds)

    async def warm(plan: list[dict]) -> None:
        for req in warmup_requests(plan):
            await one(req)

    async def run() -> tuple[float, float]:
        await asyncio.gather(*[warm(plan) for plan in plans])
        stop = asyncio.Event()

        async def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                req = plans[k][i % len(plans[k])]
                start = time.perf_counter()
                n = await one(req)
                records[k].append((start, time.perf_counter(), n))
                i += 1

        tasks = [asyncio.create_task(client(k)) for k in range(len(plans))]
        await asyncio.sleep(warmup)
        counts.append(model_counts())
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        t1 = time.perf_counter()
        counts.append(model_counts())
        stop.set()
        await asyncio.gather(*tasks)
        return t0, t1

    def model_counts() -> tuple[float, float, float]:
        stats = engine.batch_stats().get(model, {})
        return stats.get("rows", 0), stats.get("batches", 0), stats.get("busy_seconds", 0)

    counts: list[tuple[float, float, float]] = []
    t0, t1 = asyncio.run(run())
    return summarize(records, t0, t1, *counts)


# ---------------------------------------------------------------- the limit


@torch.no_grad()
def raw_limit(base, pngs: list[bytes], batch: int, seconds: float) -> dict:
    pixels = base.preprocess([open_image(p) for p in pngs[:batch]]).to(base.device)
    model = base.model.eval()

    def step() -> None:
        with inference_autocast(base.device):
            model.encode_image(pixels)
        if base.device.type == "cuda":
            torch.cuda.synchronize()

    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2:
        step()
        done += 1
    elapsed = time.perf_counter() - start
    return {"batch": batch, "passes": done, "images_per_s": round(done * batch / elapsed, 2),
            "ms_per_pass": round(elapsed / done * 1e3, 1)}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/serve_speed.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32", help="architecture (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="folder for serve_speed.json")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--big-clients", type=int, default=8)
    p.add_argument("--big-batch", type=int, default=32)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--big-seconds", type=float, default=30.0,
                   help="window for (e) and (e0), whose requests take seconds each")
    p.add_argument("--skip-http", action="store_true", help="in-process phases only")
    p.add_argument("--skip-inprocess", action="store_true", help="HTTP phases only")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the phases this many times, interleaved; report the median")
    p.add_argument("--phases", default="b,c,d,e,e0",
                   help="which of b,c,d,e,e0 to run (a always runs)")
    args = p.parse_args(argv)
    if args.skip_http and args.skip_inprocess:
        p.error("--skip-http and --skip-inprocess leave nothing to measure")
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    print(f"loading {args.model} (random weights) on {device} ...", flush=True)
    base = create_base_model(args.model, device=device)
    base.model.requires_grad_(False)
    pngs = make_pngs(256)
    images = [open_image(p) for p in pngs]
    deltas = random_deltas(base, args.clients)
    results: dict = {"model": args.model, "device": device, "max_batch": args.max_batch,
                     "max_wait_ms": args.max_wait_ms, "clients": args.clients,
                     "big": f"{args.big_clients} x {args.big_batch}", "classes": len(CLASSES),
                     "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                     "python": platform.python_version(), "torch": torch.__version__}
    print("(a) raw encode_image, before ...", flush=True)
    limit_before = raw_limit(base, pngs, args.max_batch, args.seconds / 2)

    from api.inference import InferenceEngine
    from registry.settings import Settings

    phases = {"b": ("one", args.clients, 1), "c": ("mixed", args.clients, 1),
              "e": ("one", args.big_clients, args.big_batch)}
    serial_phases = {"d": ("mixed", args.clients, 1), "e0": ("one", args.big_clients,
                                                              args.big_batch)}
    wanted = set(args.phases.split(","))
    phases = {k: v for k, v in phases.items() if k in wanted}
    serial_phases = {k: v for k, v in serial_phases.items() if k in wanted}
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="clipfit-serve-speed-") as tmp:
        tmp = Path(tmp)
        ids = store_adapters(tmp / "data", args.model, deltas, pngs[0])
        by_id = dict(zip(ids, deltas))
        common = {"CLIPFIT_AUTH": "false", "CLIPFIT_RATE_LIMIT": "",
                  "CLIPFIT_OPEN_METRICS": "true",
                  "CLIPFIT_BATCH_MAX_SIZE": str(args.max_batch),
                  "CLIPFIT_BATCH_MAX_WAIT_MS": str(args.max_wait_ms),
                  "CLIPFIT_BATCH_QUEUE_IMAGES": "100000"}
        for batching, todo in ((True, phases), (False, serial_phases)):
            if not todo:
                continue
            label = "batched" if batching else "before batching"
            settings = Settings(data_dir=tmp / "data", base_models=args.model, device=device,
                                batching=batching, batch_max_size=args.max_batch,
                                batch_max_wait_ms=args.max_wait_ms, batch_queue_images=100000)
            if not args.skip_inprocess:
                engine = InferenceEngine(settings)
                for round_, (name, (kind, clients, n)) in rounds(todo, args.rounds):
                    print(f"({name}) in-process, {label}, round {round_}: {clients} clients "
                          f"x {n} image(s), {kind} ...", flush=True)
                    plans = traffic(kind, clients, n, ids)
                    row = inprocess_phase(
                        engine, args.model, plans, images, by_id, args.warmup,
                        args.big_seconds if name.startswith("e") else args.seconds)
                    runs.setdefault((name, "in_process"), []).append(row)
                    print(f"    {row}", flush=True)
                engine.close()
            if args.skip_http:
                continue
            server = Server(args.model, device, tmp, free_port(),
                            extra_env=common | {"CLIPFIT_BATCHING": str(batching).lower()},
                            extra_args=["--no-worker"])
            server.model = args.model
            try:
                server.wait_ready(600)
                for round_, (name, (kind, clients, n)) in rounds(todo, args.rounds):
                    print(f"({name}) HTTP, {label}, round {round_}: {clients} clients x {n} "
                          f"image(s), {kind} ...", flush=True)
                    plans = traffic(kind, clients, n, ids)
                    row = http_phase(server, plans, pngs, args.warmup,
                                     args.big_seconds if name.startswith("e") else args.seconds)
                    runs.setdefault((name, "http"), []).append(row)
                    print(f"    {row}", flush=True)
            finally:
                code = server.stop()
                if code not in (0, -15, None):
                    print(f"server exited with {code}:\n{server.log_tail()}", flush=True)
    for (name, path), rows in runs.items():  # the median round, all rounds kept
        middle = sorted(rows, key=lambda r: r["images_per_s"])[len(rows) // 2]
        results.setdefault(name, {})[path] = middle | {
            "rounds_images_per_s": [r["images_per_s"] for r in rows]}
    print("(a) raw encode_image, after ...", flush=True)
    limit_after = raw_limit(base, pngs, args.max_batch, args.seconds / 2)
    # the faster of the two: load from elsewhere only ever lowers a measurement, and a higher
    # limit makes every ratio against it smaller (the conservative choice)
    limit = max(limit_before["images_per_s"], limit_after["images_per_s"])
    results["a"] = {"before": limit_before, "after": limit_after,
                    "images_per_s": round(limit, 2)}
    results["ratios"], results["goals"] = {}, {}
    for path in ("in_process", "http"):
        if any(path not in results.get(k, {}) for k in ("b", "c", "d", "e", "e0")):
            continue
        ips = {k: results[k][path]["images_per_s"] for k in ("b", "c", "d", "e", "e0")}
        ratios = {"c/a": ips["c"] / limit, "c/b": ips["c"] / ips["b"],
                  "c/d": ips["c"] / ips["d"], "e/e0": ips["e"] / ips["e0"]}
        results["ratios"][path] = {k: round(v, 3) for k, v in ratios.items()}
        results["goals"][path] = {"c >= 0.8 a": ratios["c/a"] >= 0.8,
                                  "c >= 0.9 b": ratios["c/b"] >= 0.9,
                                  "c >= 1.5 d": ratios["c/d"] >= 1.5,
                                  "e not slower than e0 (5% noise allowed)":
                                      ratios["e/e0"] >= 0.95}
    (args.out / "serve_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    print(f"\nserve_speed: {r['model']} on {r['device']}, max batch {r['max_batch']}, "
          f"{r['clients']} clients, {r['classes']} classes, torch threads {r['torch_threads']}")
    print(f"(a) limit: raw encode_image at batch {r['max_batch']}: {r['a']['images_per_s']} "
          f"img/s (before {r['a']['before']['images_per_s']}, after "
          f"{r['a']['after']['images_per_s']})")
    names = {"b": "1 image/request, one adapter", "c": "1 image/request, mixed adapters",
             "d": "(c)'s traffic, before batching", "e": f"{r['big']} images, one adapter",
             "e0": f"{r['big']} images, before batching"}
    print(f"{'':5}{'traffic':36}{'path':12}{'img/s':>8}{'answered':>10}{'batch':>7}"
          f"{'p50 ms':>9}{'p99 ms':>9}")
    for key, label in names.items():
        for path, row in r.get(key, {}).items():
            print(f"({key:>2}) {label:36}{path:12}{row['images_per_s']:>8}"
                  f"{row['answered_images_per_s']:>10}{row['mean_batch']!s:>7}"
                  f"{row['latency_p50_ms']:>9}{row['latency_p99_ms']:>9}"
                  + (f"  rounds {row['rounds_images_per_s']}"
                     if len(row["rounds_images_per_s"]) > 1 else ""))
    for path, ratios in r["ratios"].items():
        print(f"ratios {path}: " + ", ".join(f"{k} = {v}" for k, v in ratios.items()))
        print(f"goals {path}: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}"
                                             for k, ok in r["goals"][path].items()))


if __name__ == "__main__":
    # SIGTERM (a timeout) unwinds like Ctrl-C, so that the server subprocess is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
