"""``clipfit remote predict``: classify a folder (or zip) of images in the service's workers
and write the answers to a file, one row per image.

    clipfit remote predict DIR --adapter REF -o out.jsonl        (csv by -o's suffix or --format)
    clipfit remote predict DIR --classes cat,dog [--model M] -o out.csv
    clipfit remote predict --dataset ID --adapter REF -o out.jsonl
    clipfit remote predictions ls | show ID | watch ID | cancel ID | results ID [-o FILE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .client import BatchPrediction, Client
from .progress import follow

FORMATS = ("jsonl", "csv")


def add_predict_commands(groups, connect, print_as) -> None:
    """``predict`` and ``predictions`` under ``clipfit remote`` (``connect(args)`` makes the
    client, ``print_as(args, obj, table)`` prints JSON or a table)."""
    pr = groups.add_parser("predict", help="classify a folder or zip of images in the "
                           "service's workers (a batch prediction); the answers go to a file")
    pr.set_defaults(remote_func=lambda args: cmd_predict(args, connect(args), print_as))
    pr.add_argument("source", nargs="?", help="a folder of images (at any depth) or a zip")
    pr.add_argument("--dataset", help="classify a stored dataset instead")
    pr.add_argument("--adapter", help="an adapter: its id, NAME@VERSION or NAME@ALIAS")
    pr.add_argument("--classes", help="comma-separated classes: zero-shot, or other classes "
                    "for an adapter")
    pr.add_argument("--model", help="zero-shot: the base model (default: the service's first)")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--reject-unknown", action="store_true",
                    help="answer 'unknown' below the adapter's threshold")
    pr.add_argument("--threshold", type=float, help="answer 'unknown' below this probability")
    pr.add_argument("-o", "--output", help="where the results go (default: "
                    "prediction-ID.FORMAT)")
    pr.add_argument("--format", choices=FORMATS, help="jsonl or csv (default: -o's suffix, "
                    "else jsonl)")
    pr.add_argument("--no-wait", action="store_true", help="submit, print the id and return")

    ps = groups.add_parser("predictions", help="batch predictions: list, show, watch, cancel, "
                           "results")
    ps.set_defaults(remote_func=lambda args: cmd_predictions(args, connect(args), print_as))
    sub = ps.add_subparsers(dest="predictions_command", required=True)
    sub.add_parser("ls", help="the tenant's batch predictions, newest first").add_argument(
        "--status")
    for name, text in (("show", "one batch prediction"), ("watch", "follow its progress"),
                       ("cancel", "stop it before its next batch of images")):
        sub.add_parser(name, help=text).add_argument("id")
    res = sub.add_parser("results", help="download its results")
    res.add_argument("id")
    res.add_argument("-o", "--output")
    res.add_argument("--format", choices=FORMATS)


def _format(args) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
    return suffix if suffix in FORMATS else "jsonl"


def _line(p: BatchPrediction) -> str:
    counts = p.counts or {}
    return (f"{p.id}\t{p.status}\t{counts.get('done', 0)}/{counts.get('images', 0)}\t"
            f"{p.adapter or 'zero-shot'}\t{p.source}")


def _show(p: BatchPrediction) -> None:
    counts = p.counts or {}
    print(f"prediction {p.id}: {p.status}; {counts.get('done', 0)} of "
          f"{counts.get('images', 0)} images done; attempts {p.attempts}")
    print(f"  {'adapter ' + p.adapter if p.adapter else 'zero-shot'} on {p.base_model}; "
          f"{len(p.classes)} classes; top {p.top_k}")
    if p.finished and p.status == "succeeded":
        print(f"  classified {counts.get('classified')}, unknown {counts.get('unknown')}, "
              f"unreadable {counts.get('unreadable')}")
    if p.error:
        print(f"  error: {p.error}")


def watch(client: Client, p: BatchPrediction, as_json: bool) -> BatchPrediction:
    """Follow a prediction's events until it ends: a progress bar (or JSON lines)."""
    follow(client.predictions.watch(p.id), as_json, desc=f"prediction {p.id[:8]}",
           unit="img", total="images", done="images_done",
           postfix=lambda payload: {"img_s": f"{payload['images_per_sec']:.0f}"},
           notes=sys.stderr)
    return client.predictions.get(p.id)


def cmd_predict(args, client: Client, print_as) -> int:
    if (args.source is None) == (args.dataset is None):
        raise ValueError("give a folder or zip of images, or --dataset ID")
    if not (args.adapter or args.classes):
        raise ValueError("give --adapter REF, or --classes a,b,c for zero-shot")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    p = client.predictions.create(
        args.source, adapter=args.adapter, classes=classes, base_model=args.model,
        dataset_id=args.dataset, top_k=args.top_k, reject_unknown=args.reject_unknown,
        threshold=args.threshold)
    if not args.json:
        print(f"prediction {p.id} {p.status}: {p.counts.get('images')} images",
              file=sys.stderr)
    if args.no_wait:
        print_as(args, p.raw, lambda: print(p.id))
        return 0
    p = watch(client, p, args.json)
    if p.status != "succeeded":
        print_as(args, p.raw, lambda: _show(p))
        return 1
    return _download(args, client, p)


def _download(args, client: Client, p: BatchPrediction) -> int:
    fmt = _format(args)
    out = client.predictions.results(p.id, format=fmt,
                                     to=args.output or f"prediction-{p.id}.{fmt}")
    if args.json:
        print(json.dumps(p.raw | {"output": str(out)}))
    else:
        print(f"{p.counts.get('images')} answers written to {out}", file=sys.stderr)
    return 0


def cmd_predictions(args, client: Client, print_as) -> int:
    command = args.predictions_command
    if command == "ls":
        rows = list(client.predictions.list(status=args.status))
        print_as(args, [p.raw for p in rows], lambda: [print(_line(p)) for p in rows])
        return 0
    if command == "results":
        return _download(args, client, client.predictions.get(args.id))
    if command == "watch":
        p = watch(client, client.predictions.get(args.id), args.json)
    elif command == "cancel":
        p = client.predictions.cancel(args.id)
    else:
        p = client.predictions.get(args.id)
    print_as(args, p.raw, lambda: _show(p))
    return 0 if p.status in ("queued", "running", "succeeded") else 1



