"""A client session against a running clipfit service, over HTTP only.

Submits a training job from a folder-per-class image set (zipped), follows its progress as
Server-Sent Events, then classifies held-out images with the new adapter and zero-shot with
the same base model and classes, and prints both accuracies.

    python scripts/demo_client.py --url http://127.0.0.1:8000 --train DIR --test DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import httpx

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def zip_folder(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                z.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    return [(path, folder.name.replace("_", " "))
            for folder in sorted(p for p in root.iterdir() if p.is_dir())
            for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]


def wait_ready(client: httpx.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = client.get("/readyz")
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"the service at {client.base_url} is not ready after {timeout:.0f} s")
        time.sleep(0.5)


def follow(client: httpx.Client, job_id: str) -> dict:
    """Print the job's events as they arrive (SSE) until it finishes."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"stream": "true"},
                       timeout=None) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            p = event["payload"]
            if event["kind"] == "progress":
                print(f"  epoch {p['epoch']:>3}/{p['epochs']}  step {p['step']:>4}/"
                      f"{p['total_steps']}  loss {p['loss']:.4f}  {p['images_per_sec']:.0f} img/s"
                      f"  eta {p['eta_seconds']:.0f} s", flush=True)
            else:
                print(f"  {event['kind']} {json.dumps(p) if p else ''}", flush=True)
    return client.get(f"/v1/jobs/{job_id}").raise_for_status().json()


def accuracy(client: httpx.Client, images: list[tuple[Path, str]], batch: int,
             **fields: str) -> float:
    correct = 0
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        r = client.post("/v1/classify", data={**fields, "top_k": "1"}, files=[
            ("images", (path.name, path.read_bytes(), "image/png")) for path, _ in chunk])
        if r.status_code != 200:
            sys.exit(f"classify failed ({r.status_code}): {r.text}")
        correct += sum(p["label"] == label
                       for p, (_, label) in zip(r.json()["predictions"], chunk))
    return correct / len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--train", type=Path, required=True, help="folder per class")
    parser.add_argument("--test", type=Path, required=True, help="held-out, folder per class")
    parser.add_argument("--model", default="clipfit-mini")
    parser.add_argument("--epochs", default="40")
    parser.add_argument("--lr", default="0.03")
    parser.add_argument("--crop-min", default="0.5")
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--batch", type=int, default=100, help="images per classify request")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for /readyz")
    parser.add_argument("--api-key", default=os.environ.get("CLIPFIT_API_KEY"),
                        help="a key with the train, classify and read scopes "
                             "(default: $CLIPFIT_API_KEY)")
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    client = httpx.Client(base_url=args.url, timeout=300, headers=headers)
    wait_ready(client, args.wait)
    print(f"== POST /v1/jobs: {args.train} ({len(labelled_images(args.train))} images), "
          f"base model {args.model}")
    r = client.post("/v1/jobs", files={"dataset": ("train.zip", zip_folder(args.train))},
                    data={"base_model": args.model, "epochs": args.epochs, "lr": args.lr,
                          "crop_min": args.crop_min, "batch_size": args.batch_size,
                          "name": f"demo {args.train.name}"})
    if r.status_code != 202:
        sys.exit(f"job refused ({r.status_code}): {r.text}")
    job = r.json()
    print(f"   job {job['id']} {job['status']}; following GET /v1/jobs/{job['id']}/events")
    job = follow(client, job["id"])
    if job["status"] != "succeeded":
        sys.exit(f"job {job['status']}: {job['error']}")
    adapter = client.get(f"/v1/adapters/{job['adapter_id']}").raise_for_status().json()
    m = adapter["metrics"]
    print(f"== adapter {adapter['id']}: {adapter['trainable_count']} trained numbers, "
          f"{adapter['size_bytes']} bytes; on its {m.get('val_images', 0)} held-out "
          f"uploaded images: zero-shot {m.get('zero_shot_val_accuracy', float('nan')):.1%}, "
          f"ClipFit {m.get('val_accuracy', float('nan')):.1%}")

    test = labelled_images(args.test)
    print(f"== POST /v1/classify: {len(test)} held-out images of {args.test}")
    t0 = time.perf_counter()
    tuned = accuracy(client, test, args.batch, adapter_id=adapter["id"])
    seconds = time.perf_counter() - t0
    zero = accuracy(client, test, args.batch, base_model=adapter["base_model"],
                    classes=",".join(adapter["classnames"]))
    print(f"zero-shot accuracy ({adapter['base_model']}): {zero:.1%}")
    print(f"ClipFit adapter accuracy:            {tuned:.1%}  "
          f"({len(test) / seconds:.0f} images/s over HTTP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
