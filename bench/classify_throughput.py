"""Throughput of ``POST /v1/classify`` (images/s) against the raw model, in one run.

    python -m bench.classify_throughput                        # clipfit-tiny, 8 clients, 32/request
    python -m bench.classify_throughput --seconds 20 --out results/
    python -m bench.classify_throughput --no-adapter --clients 4 --batch-size 64
    python -m bench.classify_throughput --torch-threads 1      # OMP_NUM_THREADS=1 on both sides

What it does, in order:

1. Writes synthetic colour images (64x64 PNG, ``clipfit_core.synthetic``) to a temp folder.
2. Starts ``clipfit serve`` (embedded Celery worker, SQLite) as a subprocess on a free port
   with a fresh temp data dir, inherited ``CLIPFIT_*`` variables removed except
   ``CLIPFIT_WEIGHTS_DIR``, ``CLIPFIT_BASE_MODELS=<model>`` and ``CLIPFIT_DEVICE=<device>``
   (its working directory is the temp dir, so no ``.env`` is read); waits for ``GET /readyz``.
3. Unless ``--no-adapter``: trains one small adapter through ``POST /v1/jobs`` (16 images per
   class, ``--adapter-epochs``) and downloads it, for the raw side.
4. For each mode (zero-shot, then adapter):
   a. raw pass "before": this process's own ``Classifier`` (same base model spec, device,
      batch size, classes, templates and image bytes), for ``--seconds``; the server is idle;
   b. HTTP: ``--clients`` threads, each with its own ``httpx.Client``, each sending requests of
      ``--batch-size`` images back to back; ``--warmup`` seconds, then a ``--seconds`` window.
      Throughput = images of the requests that finished inside the window / window length;
      latency p50/p95 over those requests. Every answer is checked (200, one prediction per
      image); the multipart bodies are built once, so the clients spend little CPU;
   c. raw pass "after", over as many images as the HTTP window classified (server idle);
   d. stage breakdown of the raw path over the same images: decode + preprocess only, and
      encode only (image tower + logits + top-k from pre-decoded tensors).
   The ratio is HTTP / mean(raw before, raw after); the two raw passes bracket the HTTP phase,
   so a difference between them shows load from elsewhere on the machine.
5. Stops the server (terminate, wait; kill after 30 s), also on error or Ctrl-C.

The raw path is what the server runs per request: ``Classifier.classify`` (decode, resize,
normalize, image tower, logits against text features cached after the first call, softmax,
top-k). The server and this script share the machine's cores, so the raw passes run only while
the server is idle. For every phase the CPU used is printed, in cores: by the server, by this
process (the raw model, or the HTTP clients) and by every other process on the machine (from
/proc/stat); a warning says when other processes used more than 0.2 cores, since then the
numbers are not clean. Sanity checks printed with the numbers: the server's and the raw model's
top-1 labels agree on one batch, and the accuracy over the image pool (chance is 25%).
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import torch

from clipfit_core.classify import (
    Classifier,
    image_features,
    load_images,
    logits_for,
    predict,
    resolve_templates,
)
from clipfit_core.delta import Delta
from clipfit_core.models import create_base_model
from clipfit_core.synthetic import write_dataset

CLASSES = ["red", "green", "blue", "yellow"]


# ---------------------------------------------------------------- images


def make_images(root: Path, per_class: int, seed: int) -> list[tuple[bytes, str]]:
    """(png bytes, label) pairs in a fixed shuffled order, so every batch mixes classes."""
    write_dataset(root, CLASSES, per_class=per_class, seed=seed)
    items = [(p.read_bytes(), p.parent.name) for c in CLASSES
             for p in sorted((root / c).glob("*.png"))]
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def batches_of(items: list, size: int) -> list[list]:
    """Consecutive full batches (the tail that does not fill a batch is dropped)."""
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("clipfit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "clipfit"]


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def end_clients(stop, threads, errors) -> None:
    """Stop the client threads of a measured window and wait for their last answers; the
    first client error, or a request never answered within 5 minutes, is raised."""
    stop.set()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a request was never answered (5 minutes after the window)")


class CpuMeter:
    """CPU used during a phase, in cores: the server, this process, and everything else."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def start(self) -> CpuMeter:
        self._t = time.perf_counter()
        self._s = (cpu_seconds(self.server_pid), cpu_seconds(os.getpid()),
                   machine_busy_seconds())
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self._t
        server, own, busy = (b - a for a, b in zip(self._s, (
            cpu_seconds(self.server_pid), cpu_seconds(os.getpid()), machine_busy_seconds())))
        return {"server_cores": round(server / wall, 2), "bench_cores": round(own / wall, 2),
                "other_cores": round(max(0.0, busy - server - own) / wall, 2)}


class Server:
    def __init__(self, model: str, device: str, workdir: Path, port: int,
                 torch_threads: int | None = None, extra_env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "server.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CLIPFIT_") or k == "CLIPFIT_WEIGHTS_DIR"}
        env.update(CLIPFIT_BASE_MODELS=model, CLIPFIT_DEVICE=device,
                   CLIPFIT_DATA_DIR=str(workdir / "data"))
        if torch_threads:
            env["OMP_NUM_THREADS"] = str(torch_threads)  # torch's intra-op threads at start
        env.update(extra_env or {})
        self.cmd = serve_command() + ["serve", "--data-dir", str(workdir / "data"),
                                      "--port", str(port), "--log-level", "warning",
                                      *(extra_args or [])]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        # cwd: the temp dir, so no .env file of the caller's directory is read
        self.proc = subprocess.Popen(self.cmd, cwd=workdir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        start = time.perf_counter()
        with httpx.Client(timeout=5) as client:
            while time.perf_counter() - start < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"clipfit serve exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"clipfit serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------- adapter


def train_adapter(client: httpx.Client, model: str, items: list[tuple[bytes, str]],
                  epochs: int, timeout: float) -> dict:
    files = [("images", (f"{i:04d}.png", data, "image/png")) for i, (data, _) in enumerate(items)]
    form = {"labels": [label for _, label in items], "base_model": model,
            "classes": ",".join(CLASSES), "epochs": str(epochs), "lr": "0.1",
            "val_fraction": "0.25", "crop_min": "0.5", "batch_size": "32", "shots": "10000"}
    start = time.perf_counter()
    r = client.post("/v1/jobs", files=files, data=form)
    if r.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text}")
    job_id = r.json()["id"]
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            break
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"training job {job_id} {job['status']}: {job.get('error')}")
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"training job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.5)
    seconds = time.perf_counter() - start
    adapter = client.get(f"/v1/adapters/{job['adapter_id']}").json()
    return {"job_id": job_id, "adapter_id": job["adapter_id"], "train_images": len(items),
            "epochs": epochs, "submit_to_succeeded_s": round(seconds, 2),
            "metrics": adapter.get("metrics")}


def download_delta(client: httpx.Client, adapter_id: str, directory: Path) -> Delta:
    r = client.get(f"/v1/adapters/{adapter_id}/download")
    r.raise_for_status()
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(directory)
    return Delta.load(directory)


# ---------------------------------------------------------------- HTTP phase


def request_body(batch: list[tuple[bytes, str]], fields: dict) -> tuple[bytes, dict]:
    """One multipart body, encoded once by httpx and sent as is by every client."""
    files = [("images", (f"{i:04d}.png", data, "image/png")) for i, (data, _) in enumerate(batch)]
    req = httpx.Request("POST", "http://x/v1/classify", files=files, data=fields)
    return req.read(), {"content-type": req.headers["content-type"]}


def check_answer(r: httpx.Response, n: int) -> list[str]:
    if r.status_code != 200:
        raise RuntimeError(f"POST /v1/classify answered {r.status_code}: {r.text[:500]}")
    preds = r.json()["predictions"]
    if len(preds) != n:
        raise RuntimeError(f"POST /v1/classify answered {len(preds)} predictions for {n} images")
    return [p["label"] for p in preds]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def http_phase(server: Server, bodies: list[tuple[bytes, dict]], batch_size: int, clients: int,
               warmup: float, seconds: float) -> dict:
    """``clients`` threads post back to back; counts requests that finish inside the window."""
    records: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    stop = threading.Event()
    start_barrier = threading.Barrier(clients + 1)

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            i = k * 7  # a different starting batch per client
            try:
                start_barrier.wait()
                while not stop.is_set():
                    body, headers = bodies[i % len(bodies)]
                    t_start = time.perf_counter()
                    r = client.post("/v1/classify", content=body, headers=headers)
                    t_end = time.perf_counter()
                    check_answer(r, batch_size)
                    records[k].append((t_start, t_end))
                    i += 1
            except BaseException as e:  # noqa: BLE001 (re-raised by the main thread)
                errors.append(e)
                stop.set()

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True)
               for k in range(clients)]
    for t in threads:
        t.start()
    start_barrier.wait()
    time.sleep(warmup)
    meter = CpuMeter(server.proc.pid).start()
    t0 = time.perf_counter()
    time.sleep(seconds)
    t1 = time.perf_counter()
    cpu = meter.stop()
    stop.set()
    for t in threads:
        t.join(timeout=180)
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    window = t1 - t0
    done = [(s, e) for rec in records for s, e in rec if t0 <= e <= t1]
    latencies = [e - s for s, e in done]
    return {
        "clients": clients, "batch_size": batch_size, "warmup_s": warmup,
        "window_s": round(window, 3), "requests": len(done), "images": len(done) * batch_size,
        "images_per_s": round(len(done) * batch_size / window, 2),
        "requests_per_s": round(len(done) / window, 3),
        "latency_p50_s": round(percentile(latencies, 50), 4),
        "latency_p95_s": round(percentile(latencies, 95), 4),
        "latency_max_s": round(max(latencies), 4) if latencies else None,
        "cpu_cores": cpu,  # bench_cores: the HTTP clients
    }


# ---------------------------------------------------------------- raw model


def raw_pass(clf: Classifier, batches: list[list[bytes]], classnames, templates, delta,
             top_k: int, server: Server, *, seconds: float | None = None,
             images: int | None = None) -> dict:
    """``Classifier.classify`` on batches, one after another, for ``seconds`` or ``images``."""
    meter = CpuMeter(server.proc.pid).start()
    done, i = 0, 0
    start = time.perf_counter()
    while (seconds is not None and time.perf_counter() - start < seconds) or \
            (images is not None and done < images):
        batch = batches[i % len(batches)]
        preds = clf.classify(batch, classnames, templates, delta=delta, top_k=top_k)
        assert len(preds) == len(batch)
        done += len(batch)
        i += 1
    wall = time.perf_counter() - start
    return {"images": done, "wall_s": round(wall, 3), "images_per_s": round(done / wall, 2),
            "ms_per_batch": round(wall / i * 1e3, 2),
            "cpu_cores": meter.stop()}


def stage_pass(clf: Classifier, batches: list[list[bytes]], classnames, templates, delta,
               top_k: int, images: int) -> dict:
    """The raw path split in two: decode + preprocess, and encode + logits + top-k."""
    from clipfit_core.delta import applied

    text = clf.text_features(classnames, resolve_templates(templates), delta)
    n_batches = max(1, -(-images // len(batches[0])))
    chosen = [batches[i % len(batches)] for i in range(n_batches)]
    start = time.perf_counter()
    pixels = [clf.base.preprocess(load_images(b)) for b in chosen]
    prep = time.perf_counter() - start
    start = time.perf_counter()
    for px in pixels:
        with applied(clf.base, delta):
            feats = image_features(clf.base, px)
        predict(logits_for(clf.base, feats, text).cpu(), classnames, top_k=top_k)
    encode = time.perf_counter() - start
    n = n_batches * len(chosen[0])
    return {"images": n, "decode_preprocess_images_per_s": round(n / prep, 2),
            "decode_preprocess_ms_per_batch": round(prep / n_batches * 1e3, 2),
            "encode_images_per_s": round(n / encode, 2),
            "encode_ms_per_batch": round(encode / n_batches * 1e3, 2)}


# ---------------------------------------------------------------- one mode


def run_mode(name: str, server: Server, clf: Classifier, items: list[tuple[bytes, str]],
             fields: dict, classnames: list[str], templates, delta, args) -> dict:
    batches = batches_of(items, args.batch_size)
    byte_batches = [[data for data, _ in b] for b in batches]
    bodies = [request_body(b, fields) for b in batches]
    print(f"[{name}] cold request + raw warm-up ...", flush=True)
    with httpx.Client(base_url=server.url, timeout=300) as client:
        start = time.perf_counter()
        http_labels = check_answer(client.post("/v1/classify", content=bodies[0][0],
                                               headers=bodies[0][1]), args.batch_size)
        cold = time.perf_counter() - start
        # correctness: the server and the raw model answer the same for the same batch
        raw_labels = [p.labels[0] for p in clf.classify(
            byte_batches[0], classnames, templates, delta=delta, top_k=args.top_k)]
        agree = sum(a == b for a, b in zip(http_labels, raw_labels)) / len(raw_labels)
        # accuracy over one pass of all batches (sequential, not timed)
        correct = 0
        for body, batch in zip(bodies, batches):
            labels = check_answer(client.post("/v1/classify", content=body[0], headers=body[1]),
                                  len(batch))
            correct += sum(p == t for p, (_, t) in zip(labels, batch))
    print(f"[{name}] raw pass before ({args.seconds:.0f} s, server idle) ...", flush=True)
    before = raw_pass(clf, byte_batches, classnames, templates, delta, args.top_k, server,
                      seconds=args.seconds)
    print(f"[{name}] HTTP: {args.clients} clients x {args.batch_size} images, "
          f"{args.warmup:.0f} s warm-up + {args.seconds:.0f} s ...", flush=True)
    http = http_phase(server, bodies, args.batch_size, args.clients, args.warmup, args.seconds)
    print(f"[{name}] raw pass after ({http['images']} images, server idle) ...", flush=True)
    time.sleep(0.5)  # let the server finish the requests cut off at the end of the window
    after = raw_pass(clf, byte_batches, classnames, templates, delta, args.top_k, server,
                     images=max(http["images"], args.batch_size))
    stages = stage_pass(clf, byte_batches, classnames, templates, delta, args.top_k,
                        max(http["images"], args.batch_size))
    raw_mean = (before["images_per_s"] + after["images_per_s"]) / 2
    return {"mode": name, "classes": classnames, "templates": templates or "default",
            "http": http, "raw_before": before, "raw_after": after, "raw_stages": stages,
            "raw_images_per_s_mean": round(raw_mean, 2),
            "http_over_raw": round(http["images_per_s"] / raw_mean, 3),
            "cold_first_request_s": round(cold, 3),
            "top1_agreement_http_vs_raw": agree,
            "accuracy_over_pool": round(correct / sum(len(b) for b in batches), 4)}


# ---------------------------------------------------------------- report


def print_table(results: list[dict], meta: dict) -> None:
    print()
    print(f"POST /v1/classify vs raw Classifier: model {meta['model']}, device {meta['device']}, "
          f"{meta['clients']} clients x {meta['batch_size']} images/request, "
          f"{meta['seconds']:g} s window, torch threads {meta['torch_threads']}, "
          f"{meta['cpu_count']} CPUs")
    header = (f"{'mode':<10} {'HTTP img/s':>10} {'raw img/s':>18} {'ratio':>6} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'encode-only':>11} {'decode+prep':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        h, s = r["http"], r["raw_stages"]
        raw = f"{r['raw_images_per_s_mean']:.0f} ({r['raw_before']['images_per_s']:.0f}/" \
              f"{r['raw_after']['images_per_s']:.0f})"
        print(f"{r['mode']:<10} {h['images_per_s']:>10.1f} {raw:>18} {r['http_over_raw']:>6.2f} "
              f"{h['latency_p50_s'] * 1e3:>7.0f} {h['latency_p95_s'] * 1e3:>7.0f} "
              f"{s['encode_images_per_s']:>11.0f} {s['decode_preprocess_images_per_s']:>11.0f}")
    print()
    print("raw img/s: mean (before/after the HTTP phase) of one caller in this process, server "
          "idle; ratio: HTTP / raw mean.\nencode-only, decode+prep: img/s of the two halves of "
          "the raw path. CPU in cores (server / bench / other processes):")
    noisy = []
    for r in results:
        h = r["http"]
        phases = {"HTTP": h["cpu_cores"], "raw before": r["raw_before"]["cpu_cores"],
                  "raw after": r["raw_after"]["cpu_cores"]}
        cpu = "; ".join(f"{k} {c['server_cores']:.2f}/{c['bench_cores']:.2f}/"
                        f"{c['other_cores']:.2f}" for k, c in phases.items())
        print(f"  {r['mode']}: {h['requests']} requests in the window; {cpu}; first (cold) "
              f"request {r['cold_first_request_s']:.2f} s; top-1 HTTP==raw "
              f"{r['top1_agreement_http_vs_raw']:.0%}; accuracy {r['accuracy_over_pool']:.0%}")
        noisy += [f"{r['mode']} {k} ({c['other_cores']:.2f} cores)"
                  for k, c in phases.items() if c["other_cores"] > 0.2]
    if noisy:
        print(f"WARNING: other processes used CPU during {', '.join(noisy)}: the numbers are "
              "not clean; rerun on an otherwise idle machine.")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.classify_throughput",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipfit-tiny")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="images per request")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3.0, help="HTTP warm-up before it")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--images", type=int, default=512,
                        help="distinct images the requests cycle through")
    parser.add_argument("--no-adapter", action="store_true",
                        help="zero-shot only (skip training an adapter through the API)")
    parser.add_argument("--adapter-epochs", type=int, default=40)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (server and raw)")
    parser.add_argument("--torch-threads", type=int,
                        help="intra-op threads for the server (OMP_NUM_THREADS) and the raw "
                        "model; default: torch's default (one per core), as deployed")
    parser.add_argument("--out", help="directory for classify_throughput.json")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server log)")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    # SIGTERM unwinds like Ctrl-C, so the finally below stops the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="clipfit-bench-"))
    server = None
    try:
        per_class = -(-args.images // len(CLASSES))
        items = make_images(workdir / "eval", per_class, seed=1)
        train_items = make_images(workdir / "train", 16, seed=0)
        if len(items) < args.batch_size:
            raise SystemExit(f"--images {args.images} < --batch-size {args.batch_size}")

        server = Server(args.model, device, workdir, free_port(), args.torch_threads)
        print(f"starting: {' '.join(server.cmd)}", flush=True)
        ready_s = server.wait_ready(120)
        print(f"ready after {ready_s:.1f} s at {server.url}", flush=True)

        base = create_base_model(args.model, device=device)
        clf = Classifier(base, batch_size=args.batch_size)
        results = [run_mode("zero-shot", server, clf, items,
                            {"base_model": args.model, "classes": ",".join(CLASSES),
                             "top_k": str(args.top_k)}, CLASSES, None, None, args)]
        adapter = None
        if not args.no_adapter:
            print(f"training an adapter through POST /v1/jobs ({len(train_items)} images, "
                  f"{args.adapter_epochs} epochs) ...", flush=True)
            with httpx.Client(base_url=server.url, timeout=120) as client:
                adapter = train_adapter(client, args.model, train_items, args.adapter_epochs,
                                        timeout=600)
                delta = download_delta(client, adapter["adapter_id"], workdir / "delta")
            print(f"adapter {adapter['adapter_id']} in {adapter['submit_to_succeeded_s']} s",
                  flush=True)
            time.sleep(1.0)  # the worker's post-job bookkeeping
            results.append(run_mode(
                "adapter", server, clf, items,
                {"adapter_id": adapter["adapter_id"], "top_k": str(args.top_k)},
                list(delta.config.classnames), list(delta.config.templates), delta, args))

        meta = {"model": args.model, "device": device, "clients": args.clients,
                "batch_size": args.batch_size, "seconds": args.seconds, "warmup": args.warmup,
                "top_k": args.top_k, "distinct_images": len(items), "image_size_px": 64,
                "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "torch": torch.__version__, "python": platform.python_version(),
                "server_command": server.cmd, "server_ready_s": round(ready_s, 2),
                "command": [sys.executable] + sys.argv}
        print_table(results, meta)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / "classify_throughput.json"
            path.write_text(json.dumps({"meta": meta, "adapter": adapter, "results": results},
                                       indent=2) + "\n")
            print(f"\nwrote {path}")
        return 0
    except Exception:
        if server is not None:
            print(f"--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            code = server.stop()
            print(f"server stopped (exit code {code})", flush=True)
        if args.keep_tmp:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
