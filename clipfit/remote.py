"""``clipfit remote``: the service from the command line, through ``clipfit.client``.

    clipfit remote jobs create DIR --model clipfit-mini --epochs 30 --watch
    clipfit remote jobs ls | jobs show ID | jobs watch ID | jobs cancel ID
    clipfit remote adapters ls | adapters show ID | adapters evaluation ID
    clipfit remote adapters stats REF [--hours N] [--lineage]
    clipfit remote adapters download ID [--format delta|open_clip] [-o FILE]
    clipfit remote adapters import ZIP [--name N]
    clipfit remote adapters retrain REF [--promote auto] [--alias A] [--epochs N ...] [--watch]
    clipfit remote aliases set NAME ALIAS VERSION | aliases ls [--name N] | aliases rm NAME ALIAS
    clipfit remote datasets create DIR | ls | show ID | add ID DIR | rm ID;  jobs create --dataset ID
    clipfit remote adapters delete ID
    clipfit remote webhooks create URL --events job.succeeded,job.failed [--description D]
    clipfit remote webhooks ls | show ID | rm ID | deliveries ID | redeliver ID DELIVERY
    clipfit remote capture set REF [--sample-rate P] [--below-confidence P] [--unknown]
                           [--classes a,b] [--max-per-hour N] [--max-per-day N]
                           [--retention-days N] [--alias A] [--retrain-after N]
                           [--promote manual|auto]  |  capture show REF | capture off REF
    clipfit remote captures ls REF [--rule R] [--predicted C] [--state S] | show REF ID
    clipfit remote captures label REF LABEL ID... [--new-class] | discard REF ID...
    clipfit remote captures image REF ID [-o FILE]
    clipfit remote classify IMAGE... --adapter ID [--reject-unknown | --threshold P]
                                                       (or --model M --classes a,b,c)
    clipfit remote predict DIR|ZIP --adapter REF -o out.jsonl   (or --classes a,b,c; .csv)
    clipfit remote predictions ls | show ID | watch ID | cancel ID | results ID [-o FILE]

The service's URL and key come from ``--url`` / ``--api-key``, else ``CLIPFIT_URL`` /
``CLIPFIT_API_KEY``, else the config file (``--config``, ``CLIPFIT_CONFIG``, default
``~/.config/clipfit/remote.toml``: ``url = "..."`` and ``api_key = "..."``). ``--json``
prints JSON for scripts instead of tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

import httpx

from clipfit_core.config import AUTO_FIELDS, TrainConfig, input_name, number_or_auto

from .client import (
    DEFAULT_URL,
    ApiError,
    Capture,
    CaptureSettings,
    Client,
    Job,
    Webhook,
    folder_summary,
)
from .progress import follow
from .remote_predict import add_predict_commands

CONFIG_PATH = "~/.config/clipfit/remote.toml"


def _config(args) -> dict:
    path = Path(args.config or os.environ.get("CLIPFIT_CONFIG") or CONFIG_PATH).expanduser()
    if not path.is_file():
        if args.config:
            raise ValueError(f"config file {path} does not exist")
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path}: {e}") from e


def connect(args) -> Client:
    """A client from flags, then the environment, then the config file."""
    config = _config(args)
    url = args.url or os.environ.get("CLIPFIT_URL") or config.get("url") or DEFAULT_URL
    key = args.api_key or os.environ.get("CLIPFIT_API_KEY") or config.get("api_key")
    return Client(url, key or "", timeout=args.timeout)


def _print(args, obj, table) -> None:
    if args.json:
        print(json.dumps(obj, indent=2))
    else:
        table()


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _job_line(j: Job) -> str:
    return f"{j.id}\t{j.status}\t{j.base_model}\t{j.name or ''}\t{j.adapter_id or ''}"


def _follow_submitted(args, client, job) -> int:
    """After a job was submitted (a new job or a retrain): say so, watch or wait when asked,
    print it; 0 unless it failed or was cancelled."""
    if not args.json:
        print(f"job {job.id} {job.status}", file=sys.stderr)
    if args.watch or args.wait:
        job = watch(client, job, args.json) if args.watch else client.jobs.wait(job.id)
    _print(args, job.raw, lambda: _show_job(job))
    return 0 if job.status in ("queued", "running", "succeeded") else 1


def watch(client: Client, job: Job, as_json: bool) -> Job:
    """Follow a job's events until it ends: a progress bar (or JSON lines)."""
    follow(client.jobs.watch(job.id), as_json, desc=f"job {job.id[:8]}", unit="step",
           total="total_steps", done="step",
           postfix=lambda p: {"epoch": f"{p['epoch']}/{p['epochs']}", "loss": f"{p['loss']:.4f}",
                              "img_s": f"{p['images_per_sec']:.0f}"})
    return client.jobs.get(job.id)


def cmd_jobs(args) -> int:
    client = connect(args)
    if args.jobs_command == "create":
        if (args.source is None) == (args.dataset is None):
            raise ValueError("give a folder or zip, or --dataset ID")
        source = Path(args.source) if args.source else None
        if source is not None and source.is_dir() and not args.json:
            counts = folder_summary(source)
            print(f"{source}: {len(counts)} classes, {sum(counts.values())} images ("
                  + ", ".join(f"{c} {n}" for c, n in counts.items()) + ")", file=sys.stderr)
        hyper = {input_name(f): getattr(args, f.name) for f in TrainConfig.exposed_fields()
                 if getattr(args, f.name) is not None}  # the API's field names ("lambda")
        if args.parent:
            hyper["parent_adapter_id"] = args.parent
        if args.dataset:
            hyper["dataset_id"] = args.dataset
        job = client.jobs.create(source, base_model=args.model, name=args.name, **hyper)
        return _follow_submitted(args, client, job)
    if args.jobs_command == "ls":
        jobs = list(client.jobs.list(status=args.status, limit=min(args.limit, 200)))
        jobs = jobs[:args.limit]
        _print(args, [j.raw for j in jobs], lambda: [print(_job_line(j)) for j in jobs])
        return 0
    if args.jobs_command == "show":
        job = client.jobs.get(args.id)
        _print(args, job.raw, lambda: _show_job(job))
        return 0
    if args.jobs_command == "watch":
        job = watch(client, client.jobs.get(args.id), args.json)
        if not args.json:
            _show_job(job)
        return 0 if job.status == "succeeded" else 1
    job = client.jobs.cancel(args.id)
    _print(args, job.raw, lambda: _show_job(job))
    return 0


def _show_job(job: Job) -> None:
    print(f"job {job.id}: {job.status}" + (f" ({job.name})" if job.name else ""))
    print(f"  base model {job.base_model}; attempts {job.attempts}")
    if job.progress:
        p = job.progress
        print(f"  progress: epoch {p.get('epoch')}/{p.get('epochs')}, step {p.get('step')}/"
              f"{p.get('total_steps')}")
    if job.retrain:
        r = job.retrain
        print(f"  retrain of {r['lineage']} from adapter {job.parent_adapter_id}: dataset "
              f"version {job.dataset_id} (+{r['added']} captures), benchmark set "
              f"{r['benchmark_images']} images (+{r['benchmarked']} captures, "
              f"+{r['held_out']} held out) never trained on; promote {r['promote']}"
              + (f" to @{r['alias']}" if r.get("alias") else ""))
    if job.error:
        print(f"  error: {job.error}")
    if job.adapter_id:
        print(f"  adapter {job.adapter_id}")


def cmd_adapters(args) -> int:
    client = connect(args)
    if args.adapters_command == "ls":
        adapters = list(client.adapters.list())
        _print(args, [a.raw for a in adapters], lambda: [
            print(f"{a.id}\t{a.base_model}\t{len(a.classnames)} classes\t"
                  f"zero-shot {_pct(a.metrics.get('zero_shot_val_accuracy'))}\t"
                  f"tuned {_pct(a.metrics.get('val_accuracy'))}\t{a.name or ''}"
                  + (f" v{a.version}" if a.version else ""))
            for a in adapters])
        return 0
    if args.adapters_command == "show":
        a = client.adapters.get(args.id)
        _print(args, a.raw, lambda: print(
            f"adapter {a.id} ({a.name or 'unnamed'}) on {a.base_model}: "
            f"{', '.join(a.classnames)}\n  {a.trainable_count} trained numbers, "
            f"{a.size_bytes} bytes; held-out accuracy zero-shot "
            f"{_pct(a.metrics.get('zero_shot_val_accuracy'))}, tuned "
            f"{_pct(a.metrics.get('val_accuracy'))}"))
        return 0
    if args.adapters_command == "evaluation":
        report = client.adapters.evaluation(args.id)
        _print(args, report, lambda: print_evaluation(report))
        return 0
    if args.adapters_command == "stats":
        served = client.adapters.stats(args.ref, hours=args.hours, lineage=args.lineage)
        _print(args, served, lambda: print_stats(served))
        return 0
    if args.adapters_command == "import":
        a = client.adapters.import_zip(Path(args.zip), name=args.name)
        _print(args, a.raw, lambda: print(f"imported adapter {a.id} on {a.base_model}: "
                                          f"{', '.join(a.classnames)}"))
        return 0
    if args.adapters_command == "retrain":
        hyper = {input_name(f): getattr(args, f.name) for f in TrainConfig.exposed_fields()
                 if f.name != "templates" and getattr(args, f.name) is not None}
        job = client.adapters.retrain(args.id, promote=args.promote, alias=args.alias, **hyper)
        return _follow_submitted(args, client, job)
    if args.adapters_command == "download":
        prefix = "clipfit-adapter" if args.format == "delta" else "clipfit-open-clip"
        out = Path(args.output or f"{prefix}-{args.id}.zip")
        content = client.adapters.download(args.id, out, format=args.format)
        _print(args, {"path": str(out), "bytes": len(content)},
               lambda: print(f"{out} ({len(content)} bytes)"))
        return 0
    client.adapters.delete(args.id)
    _print(args, {"deleted": args.id}, lambda: print(f"deleted adapter {args.id}"))
    return 0


def cmd_datasets(args) -> int:
    client = connect(args)
    if args.datasets_command in ("create", "add"):
        d = client.datasets.create(Path(args.source)) if args.datasets_command == "create" \
            else client.datasets.add(args.id, Path(args.source))
    elif args.datasets_command == "ls":
        rows = client.datasets.list()
        _print(args, rows, lambda: [print(f"{d['id']}\t{d['images']} images\t"
                                          f"{len(d['classnames'])} classes\t{d['jobs']} jobs")
                                    for d in rows])
        return 0
    elif args.datasets_command == "show":
        d = client.datasets.get(args.id)
    else:
        client.datasets.delete(args.id)
        _print(args, {"deleted": args.id}, lambda: print(f"deleted dataset {args.id}"))
        return 0
    version = f" (version {d['version']}, from {d['parent_id']})" if d.get("parent_id") \
        else ""
    _print(args, d, lambda: print(f"dataset {d['id']}{version}: {d['images']} images, "
                                  + ", ".join(f"{c} {n}" for c, n in d["counts"].items())))
    return 0


def cmd_aliases(args) -> int:
    client = connect(args)
    if args.aliases_command == "set":
        a = client.aliases.set(args.name, args.alias, version=args.version)
        _print(args, a.raw, lambda: print(f"{a.reference} -> version {a.version} "
                                          f"(adapter {a.adapter_id})"))
        return 0
    if args.aliases_command == "ls":
        rows = client.aliases.list(name=args.name)
        _print(args, [a.raw for a in rows], lambda: [
            print(f"{a.reference}\tversion {a.version}\t{a.adapter_id}") for a in rows])
        return 0
    client.aliases.delete(args.name, args.alias)
    _print(args, {"deleted": f"{args.name}@{args.alias}"},
           lambda: print(f"deleted alias {args.name}@{args.alias}"))
    return 0


def _webhook_line(w: Webhook) -> str:
    return f"{w.id}\t{w.url}\t{','.join(w.events)}\t{w.description or ''}"


def cmd_webhooks(args) -> int:
    client = connect(args)
    command = args.webhooks_command
    if command == "create":
        events = [e.strip() for e in args.events.split(",") if e.strip()]
        w = client.webhooks.create(args.endpoint, events, description=args.description)
        _print(args, w.raw, lambda: print(f"webhook {w.id} -> {w.url} ({', '.join(w.events)})"
                                          f"\nsigning secret, shown only now: {w.secret}"))
    elif command == "ls":
        hooks = client.webhooks.list()
        _print(args, [w.raw for w in hooks], lambda: [print(_webhook_line(w)) for w in hooks])
    elif command == "show":
        w = client.webhooks.get(args.id)
        _print(args, w.raw, lambda: print(_webhook_line(w)))
    elif command == "rm":
        client.webhooks.delete(args.id)
        _print(args, {"deleted": args.id}, lambda: print(f"deleted webhook {args.id}"))
    elif command == "deliveries":
        log = client.webhooks.deliveries(args.id, limit=args.limit)
        _print(args, [d.raw for d in log], lambda: [print(
            f"{d.id}\t{d.event_type}\t{d.status}\t{d.attempts} attempts\t"
            f"{d.last_status_code or '-'}\t{d.last_error or ''}") for d in log])
    else:
        d = client.webhooks.redeliver(args.id, args.delivery)
        _print(args, d.raw, lambda: print(f"delivery {d.id} ({d.event_type}): {d.status}, "
                                          "sent again soon"))
    return 0


def _show_capture_settings(c: CaptureSettings) -> None:
    if not c.enabled:
        print(f"capture is off for {c.lineage}")
        return
    rules = [f"{name} {value}" for name, value in (
        ("sample_rate", c.sample_rate), ("below_confidence", c.below_confidence),
        ("classes", ",".join(c.classes) or None), ("unknown", c.unknown or None)) if value]
    caps = [f"{n} per {unit}" for n, unit in ((c.max_per_hour, "hour"), (c.max_per_day, "day"))
            if n is not None]
    print(f"capture on for {c.lineage}" + (f"@{c.alias}" if c.alias else "") + ": "
          + "; ".join(rules) + (f"; at most {', '.join(caps)}" if caps else "")
          + f"; kept {c.retention_days} days"
          + (f"; retrain after {c.retrain_after} labels (promote {c.promote})"
             if c.retrain_after else ""))


def cmd_capture(args) -> int:
    client = connect(args)
    if args.capture_command == "set":
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        c = client.adapters.set_capture(
            args.ref, sample_rate=args.sample_rate, below_confidence=args.below_confidence,
            unknown=args.unknown, classes=classes, max_per_hour=args.max_per_hour,
            max_per_day=args.max_per_day, retention_days=args.retention_days, alias=args.alias,
            retrain_after=args.retrain_after, promote=args.promote)
    elif args.capture_command == "show":
        c = client.adapters.get_capture(args.ref)
    else:
        client.adapters.disable_capture(args.ref)
        c = client.adapters.get_capture(args.ref)
    _print(args, c.raw, lambda: _show_capture_settings(c))
    return 0


def _capture_line(c: Capture) -> str:
    verdict = {"labelled": f"-> {c.label}" + (" (new class)" if c.new_class else ""),
               "discarded": "discarded"}.get(c.state, "pending")
    return (f"{c.id}\t{c.created_at}\t{c.rule}\t{c.predicted} {c.confidence:.3f}\t"
            f"{verdict}\t{c.filename or ''}")


def cmd_captures(args) -> int:
    client, command = connect(args), args.captures_command
    if command == "ls":
        rows = list(client.adapters.captures(
            args.ref, rule=args.rule, predicted=args.predicted,
            min_confidence=args.min_confidence, max_confidence=args.max_confidence,
            state=args.state, limit=min(args.limit, 200)))[:args.limit]
        _print(args, [c.raw for c in rows], lambda: [print(_capture_line(c)) for c in rows])
        return 0
    if command == "show":
        c = client.adapters.capture(args.ref, args.id)
        _print(args, c.raw, lambda: print(_capture_line(c) + "\n  top: " + ", ".join(
            f"{t['label']} {t['prob']:.3f}" for t in c.top_k)))
        return 0
    if command == "image":
        c = client.adapters.capture(args.ref, args.id)
        kind = c.media_type or "application/octet-stream"
        suffix = {"image/jpeg": ".jpg", "application/octet-stream": ".bin"}.get(
            kind, "." + kind.split("/")[-1])
        out = Path(args.output or f"capture-{args.id}{suffix}")
        content = client.adapters.capture_image(args.ref, args.id, out)
        _print(args, {"path": str(out), "bytes": len(content)},
               lambda: print(f"{out} ({len(content)} bytes)"))
        return 0
    if command == "label":
        items = [{"id": i, "label": args.label} | ({"new_class": True} if args.new_class else {})
                 for i in args.ids]
    else:
        items = [{"id": i, "discard": True} for i in args.ids]
    rows = client.adapters.label_captures(args.ref, items)  # all or none
    _print(args, [c.raw for c in rows], lambda: [print(_capture_line(c)) for c in rows])
    return 0


def print_evaluation(report: dict) -> None:
    """The held-out report as a table: zero-shot vs tuned per class, then the calibration."""
    ev, cal = report["evaluation"], report.get("calibration")
    zero, tuned = ev["zero_shot"], ev["tuned"]
    print(f"held-out images: {ev['images']}; accuracy zero-shot {_pct(zero['accuracy'])}, "
          f"tuned {_pct(tuned['accuracy'])}")
    width = max(len(c) for c in ev["classnames"] + ["class"])
    print(f"  {'class':<{width}}  images  zero-shot recall  tuned recall  precision (zs/tuned)")
    for z, t in zip(zero["per_class"], tuned["per_class"]):
        print(f"  {t['class']:<{width}}  {t['images']:>6}  {_pct(z['recall']):>16}  "
              f"{_pct(t['recall']):>12}  {_pct(z['precision'])} / {_pct(t['precision'])}")
    if cal:
        print(f"calibration: temperature {cal['temperature']}, ECE {_pct(cal['ece_before'])} -> "
              f"{_pct(cal['ece_after'])}; 'unknown' below {_pct(cal['threshold'])} "
              f"(rejects {_pct(cal['held_out_rejected_right'])} of right held-out answers)")


def print_stats(served: dict) -> None:
    """What each version served: its totals against its held-out baseline, then its hours."""
    for v in served["versions"]:
        t, base = v["totals"], v["baseline"]
        print(f"{v['adapter_id']} {v['name'] or 'unnamed'}"
              + (f" v{v['version']}" if v["version"] else "")
              + f": {t['predictions']} answers in {served['hours']} h; unknown "
              f"{_pct(t['unknown_share'])} (held-out {_pct(base['unknown_share'])}), "
              f"low confidence {_pct(t['low_confidence_share'])} (held-out "
              f"{_pct(base['low_confidence_share'])}), captured {_pct(t['captured_share'])}")
        if v["hours"]:
            print("  hour (UTC)\tanswers\tunknown\tlow confidence\tcaptured")
        for h in v["hours"]:
            print(f"  {h['hour'][:16].replace('T', ' ')}\t{h['predictions']}\t"
                  f"{_pct(h['unknown_share'])}\t{_pct(h['low_confidence_share'])}\t"
                  f"{_pct(h['captured_share'])}")


def cmd_classify(args) -> int:
    if not (args.adapter or (args.model and args.classes)):
        raise ValueError("give --adapter ID, or --model SPEC with --classes a,b,c")
    client = connect(args)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    predictions = client.classify(args.images, adapter=args.adapter, base_model=args.model,
                                  classes=classes, top_k=args.top_k,
                                  reject_unknown=args.reject_unknown, threshold=args.threshold)
    _print(args, [{"image": str(i), **p.raw} for i, p in zip(args.images, predictions)],
           lambda: [print(f"{i}\t{p.label}\t" + "  ".join(f"{lab} {prob:.3f}"
                                                           for lab, prob in p.top_k))
                    for i, p in zip(args.images, predictions)])
    return 0


def run(args) -> int:
    """A remote command; refusals and unreachable services are reported, not raised."""
    try:
        return args.remote_func(args)
    except ApiError as e:
        print(f"clipfit: the service refused: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:  # not an OSError: no service there, or it went away
        try:
            where = f" {e.request.url.copy_with(query=None)}"
        except RuntimeError:  # raised before a request was made
            where = ""
        print(f"clipfit: error: cannot reach the service{where}: {e}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as e:
        print(f"clipfit: error: {e}", file=sys.stderr)
        return 1


def add_remote_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("remote", help="use a running service: jobs, adapters, classify",
                       description=__doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help=f"the service (default $CLIPFIT_URL, the config file, "
                   f"{DEFAULT_URL})")
    p.add_argument("--api-key", help="default $CLIPFIT_API_KEY or the config file")
    p.add_argument("--config", help=f"TOML with url and api_key (default $CLIPFIT_CONFIG or "
                   f"{CONFIG_PATH})")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.set_defaults(func=run)
    groups = p.add_subparsers(dest="remote_command", required=True)

    jobs = groups.add_parser("jobs", help="training jobs").add_subparsers(
        dest="jobs_command", required=True)
    c = jobs.add_parser("create", help="upload a folder per class (or a zip) and train")
    c.add_argument("source", nargs="?", help="a folder with one sub-folder per class, or a "
                   ".zip (or --dataset)")
    c.add_argument("--dataset", help="train on a stored dataset instead (its id)")
    c.add_argument("--model", help="base model (default: the service's first)")
    c.add_argument("--name")
    add_spec_flags(c)
    c.add_argument("--parent", help="warm start from this adapter (id, NAME@VERSION or "
                   "NAME@ALIAS)")
    add_wait_flags(c)
    ls = jobs.add_parser("ls", help="the tenant's jobs, newest first")
    ls.add_argument("--status", choices=["queued", "running", "succeeded", "failed",
                                         "cancelled"])
    ls.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "one job"), ("watch", "follow a job until it ends"),
                       ("cancel", "cancel a job")):
        jobs.add_parser(name, help=text).add_argument("id")
    groups.choices["jobs"].set_defaults(remote_func=cmd_jobs)

    adapters = groups.add_parser("adapters", help="trained adapters")
    adapters.set_defaults(remote_func=cmd_adapters)
    a = adapters.add_subparsers(dest="adapters_command", required=True)
    a.add_parser("ls", help="the tenant's adapters")
    a.add_parser("show", help="one adapter").add_argument("id")
    a.add_parser("evaluation", help="zero-shot vs tuned per class on the held-out split, "
                 "and the calibration").add_argument("id")
    st = a.add_parser("stats", help="what the adapter served, hour by hour: answers, shares "
                      "'unknown', of low confidence and captured, against its held-out split")
    st.add_argument("ref", help="id, name@VERSION or name@alias")
    st.add_argument("--hours", type=int, default=24, help="the window (1 to 2160, default 24)")
    st.add_argument("--lineage", action="store_true", help="every version of its name")
    d = a.add_parser("download", help="the delta files, zipped")
    d.add_argument("id")
    d.add_argument("-o", "--output", help="default clipfit-adapter-ID.zip "
                   "(clipfit-open-clip-ID.zip for --format open_clip)")
    d.add_argument("--format", choices=["delta", "open_clip"], default="delta",
                   help="delta: the two delta files; open_clip: the base with the delta "
                   "merged, as open_clip loads it")
    i = a.add_parser("import", help="store a delta zip trained elsewhere on an allowed base")
    i.add_argument("zip")
    i.add_argument("--name")
    a.add_parser("delete", help="delete an adapter").add_argument("id")
    rt = a.add_parser("retrain", help="train the next version of REF's name, warm-started "
                      "from it, on its dataset plus the labelled captures that wait")
    rt.add_argument("id", metavar="REF", help="id, NAME@VERSION or NAME@ALIAS")
    rt.add_argument("--promote", choices=["manual", "auto"],
                    help="kept on the job for promotion (default manual)")
    rt.add_argument("--alias", help="the alias promotion would move")
    add_spec_flags(rt, retrain=True)
    add_wait_flags(rt)

    ds = groups.add_parser("datasets", help="stored image sets to train jobs on")
    ds.set_defaults(remote_func=cmd_datasets)
    sub_ds = ds.add_subparsers(dest="datasets_command", required=True)
    sub_ds.add_parser("create", help="upload a folder per class (or a zip)").add_argument(
        "source")
    sub_ds.add_parser("ls", help="the tenant's datasets")
    sub_ds.add_parser("show", help="one dataset: classes and counts").add_argument("id")
    add = sub_ds.add_parser("add", help="a new version with a folder's images added (new "
                            "classes allowed); the dataset ID stays as it is")
    add.add_argument("id")
    add.add_argument("source")
    sub_ds.add_parser("rm", help="delete a dataset no job used").add_argument("id")

    al = groups.add_parser("aliases", help="name@alias pointers at adapter versions")
    al.set_defaults(remote_func=cmd_aliases)
    sub_al = al.add_subparsers(dest="aliases_command", required=True)
    st = sub_al.add_parser("set", help="create or move NAME@ALIAS to VERSION (rollback: "
                           "set it back)")
    st.add_argument("name")
    st.add_argument("alias")
    st.add_argument("version", type=int)
    sub_al.add_parser("ls", help="the tenant's aliases").add_argument("--name")
    rm = sub_al.add_parser("rm", help="delete NAME@ALIAS")
    rm.add_argument("name")
    rm.add_argument("alias")

    wh = groups.add_parser("webhooks", help="endpoints the service sends signed job and "
                           "adapter events to, and their deliveries")
    wh.set_defaults(remote_func=cmd_webhooks)
    sub_wh = wh.add_subparsers(dest="webhooks_command", required=True)
    c = sub_wh.add_parser("create", help="register URL; prints its signing secret (shown "
                          "only now)")
    c.add_argument("endpoint", metavar="URL", help="where the service POSTs the events")
    c.add_argument("--events", required=True, help="comma-separated: job.succeeded, "
                   "job.failed, job.cancelled, adapter.deleted, adapter.drift, "
                   "adapter.version_ready")
    c.add_argument("--description")
    sub_wh.add_parser("ls", help="the tenant's webhook endpoints")
    sub_wh.add_parser("show", help="one endpoint").add_argument("id")
    sub_wh.add_parser("rm", help="delete an endpoint").add_argument("id")
    dl = sub_wh.add_parser("deliveries", help="an endpoint's deliveries, newest first")
    dl.add_argument("id")
    dl.add_argument("--limit", type=int, default=50)
    rd = sub_wh.add_parser("redeliver", help="send a delivery again")
    rd.add_argument("id")
    rd.add_argument("delivery")

    add_capture_commands(groups)
    add_predict_commands(groups, connect, _print)

    k = groups.add_parser("classify", help="classify image files")
    k.set_defaults(remote_func=cmd_classify)
    k.add_argument("images", nargs="+")
    k.add_argument("--adapter", help="an adapter: its id, NAME@VERSION or NAME@ALIAS")
    k.add_argument("--model", help="zero-shot: a base model")
    k.add_argument("--classes", help="comma-separated classes (zero-shot, or other classes "
                   "for an adapter)")
    k.add_argument("--top-k", type=int, default=3)
    k.add_argument("--reject-unknown", action="store_true",
                   help="answer 'unknown' below the adapter's threshold")
    k.add_argument("--threshold", type=float, help="answer 'unknown' below this probability")


def add_spec_flags(parser, *, retrain: bool = False) -> None:
    """A flag per exposed field of the training spec, by its API name (--lambda); a
    retrain's default is the parent job's value, and it keeps the parent's templates."""
    for f in TrainConfig.exposed_fields():
        if retrain and f.name == "templates":
            continue
        default = "the parent job's" if retrain else f"the service's, {f.default}"
        kwargs = {"dest": f.name, "default": None,
                  "help": f"{f.metadata['help']} (default: {default})"}
        if f.name in AUTO_FIELDS:  # a number, or auto (the service picks it)
            kwargs["type"] = number_or_auto(type(f.default))
        elif not isinstance(f.default, str):
            kwargs["type"] = type(f.default)
        parser.add_argument("--" + input_name(f).replace("_", "-"), **kwargs)


def add_wait_flags(parser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--watch", action="store_true", help="follow progress until it ends")
    how.add_argument("--wait", action="store_true", help="wait quietly until it ends")


def add_capture_commands(groups) -> None:
    cp = groups.add_parser("capture", help="which classified images of an adapter's lineage "
                           "(its name, every version) are kept for review")
    cp.set_defaults(remote_func=cmd_capture)
    sub = cp.add_subparsers(dest="capture_command", required=True)
    st = sub.add_parser("set", help="capture by these rules (at least one); replaces the "
                        "lineage's settings")
    st.add_argument("ref", help="the adapter: id, NAME@VERSION or NAME@ALIAS")
    st.add_argument("--sample-rate", type=float, help="keep this share of answers at random")
    st.add_argument("--below-confidence", type=float,
                    help="keep answers whose top probability is below this")
    st.add_argument("--unknown", action="store_true", help="keep answers of 'unknown'")
    st.add_argument("--classes", help="keep answers of these classes (comma-separated)")
    st.add_argument("--max-per-hour", type=int)
    st.add_argument("--max-per-day", type=int)
    st.add_argument("--retention-days", type=int, help="days a capture is kept (default 30)")
    st.add_argument("--alias", help="only requests that named the adapter NAME@ALIAS")
    st.add_argument("--retrain-after", type=int, help="start a retrain when this many "
                    "labelled captures wait (a named adapter)")
    st.add_argument("--promote", choices=["manual", "auto"], help="such a retrain's "
                    "promotion (default manual)")
    sub.add_parser("show", help="the lineage's settings").add_argument("ref")
    sub.add_parser("off", help="stop capturing (captures stay until they expire)"
                   ).add_argument("ref")

    cs = groups.add_parser("captures", help="review captured images: list, look, label, "
                           "discard")
    cs.set_defaults(remote_func=cmd_captures)
    sub = cs.add_subparsers(dest="captures_command", required=True)
    ls = sub.add_parser("ls", help="the lineage's captures, newest first")
    ls.add_argument("ref")
    ls.add_argument("--rule", choices=["unknown", "below_confidence", "classes",
                                       "sample_rate"])
    ls.add_argument("--predicted", help="the answer's label")
    ls.add_argument("--min-confidence", type=float)
    ls.add_argument("--max-confidence", type=float)
    ls.add_argument("--state", choices=["pending", "labelled", "discarded"])
    ls.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "one capture and its answer"),
                       ("image", "save the captured image")):
        one = sub.add_parser(name, help=text)
        one.add_argument("ref")
        one.add_argument("id")
        if name == "image":
            one.add_argument("-o", "--output", help="default capture-ID.<type>")
    lb = sub.add_parser("label", help="label captures with LABEL (all or none)")
    lb.add_argument("ref")
    lb.add_argument("label", help="one of the adapter's classes (or --new-class)")
    lb.add_argument("ids", nargs="+", metavar="ID")
    lb.add_argument("--new-class", action="store_true", help="LABEL is a new class")
    dc = sub.add_parser("discard", help="discard captures (all or none)")
    dc.add_argument("ref")
    dc.add_argument("ids", nargs="+", metavar="ID")
