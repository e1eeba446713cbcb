"""The ``clipfit`` command line: params, train, eval, classify, info.

Building the parser loads no torch: each command imports what it runs when it runs, and a
command whose options come from a torch module (export, pretrain-mini) gets them when it is
chosen. So listing the commands, and the client's ``clipfit remote``, start at once and need
none of the server's dependencies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules here: each command imports the torch stack it runs (see the docstring).
from .config import (
    AUTO,
    AUTO_FIELDS,
    TrainConfig,
    input_name,
    number_or_auto,
    prepare_training_set,
    recipe_fields,
    with_auto,
)
from .recipes import RECIPES
from .version import __version__

if TYPE_CHECKING:
    from .delta import Delta
    from .models import BaseModel

# Bad input, reported in one line: DatasetError, DeltaError, UnknownModelError and
# UnsupportedArchitectureError are ValueErrors (WeightsUnavailableError: see main).
USER_ERRORS = (ValueError, FileNotFoundError)


def _load_base(args, spec: str | None = None) -> BaseModel:
    from .models import create_base_model, resolve_device

    return create_base_model(
        spec or args.model, device=resolve_device(args.device), cache_dir=args.cache_dir,
        allow_download=not args.offline,
    )


def _load_adapter(args) -> tuple[BaseModel, Delta]:
    from .delta import Delta

    delta = Delta.load(args.adapter)
    base = _load_base(args, args.model or delta.config.base_model)
    return base, delta


def cmd_params(args) -> int:
    from .models import create_base_model, parse_model_spec
    from .params import trainable_parameters

    arch, _ = parse_model_spec(args.arch)  # counts do not depend on the weights
    base = create_base_model(arch, fingerprint=False)
    total = 0
    for name, p in trainable_parameters(base.model).items():
        print(f"{name}\t{p.numel()}")
        total += p.numel()
    print(f"total: {total}")
    return 0


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .data import check_readable, load_dataset
    from .train import train_clipfit

    values = {f.name: getattr(args, f.name) for f in _train_flags()}
    if args.recipe:  # under the flags given explicitly
        values |= {k: v for k, v in recipe_fields(args.recipe).items()
                   if k not in args.given_flags}
    TrainConfig(**{k: 1 if k in AUTO_FIELDS and v == AUTO else v  # bad values first
                   for k, v in values.items()})
    dataset = load_dataset(args.data)
    check_readable(dataset)
    base = _load_base(args)
    config, autos = with_auto(values, dataset, base_model=base.spec)
    if autos:
        print("auto: " + ", ".join(f"{k} {getattr(config, k)}" for k in autos), file=sys.stderr)
    dataset, val = prepare_training_set(dataset, config)
    counts = dataset.counts()
    print(f"training {base.spec} on {len(dataset)} images, {len(counts)} classes "
          f"({min(counts.values())}-{max(counts.values())} per class)"
          + (f", validating on {len(val)}" if val else ""), file=sys.stderr)

    bar = tqdm(total=None, unit="step", desc="train", disable=args.quiet, file=sys.stderr)

    def on_progress(p):
        bar.total = p.total_steps
        bar.set_postfix(epoch=f"{p.epoch}/{p.epochs}", loss=f"{p.loss:.3f}",
                        lr=f"{p.lr:.2e}", img_s=f"{p.images_per_sec:.1f}", refresh=False)
        bar.update(1)

    result = train_clipfit(base, dataset, config, val_set=val, on_progress=on_progress)
    bar.close()
    delta = result.delta
    delta.config.metrics["images_per_sec"] = round(result.images_per_sec, 2)
    out = delta.save(args.out)
    summary = {"out": str(out), "trainable": delta.numel(), "seconds": round(result.seconds, 2),
               "images_per_sec": round(result.images_per_sec, 2), **delta.config.metrics}
    print(json.dumps(summary))
    return 0


def cmd_eval(args) -> int:
    import torch
    from tqdm import tqdm

    from .classify import Classifier, resolve_templates
    from .data import check_readable, load_dataset
    from .evaluate import accuracy, per_class_accuracy
    from .report import evaluation_report

    dataset = load_dataset(args.data)
    check_readable(dataset)
    if args.adapter:
        base, delta = _load_adapter(args)
        templates = resolve_templates(args.template) if args.template else delta.config.templates
    else:
        base, delta = _load_base(args), None
        templates = resolve_templates(args.template)
    classifier = Classifier(base, batch_size=args.batch_size)
    sources = [s.source for s in dataset.samples]
    tuned, zero_shot = [], []
    for i in tqdm(range(0, len(sources), args.batch_size), desc="eval", unit="batch",
                  disable=args.quiet, file=sys.stderr):
        chunk = sources[i:i + args.batch_size]
        tuned.append(classifier.logits(chunk, dataset.classnames, templates, delta))
        if delta is not None:  # the baseline, side by side
            zero_shot.append(classifier.logits(chunk, dataset.classnames, templates, None))
    logits = torch.cat(tuned)
    preds = logits.argmax(-1)
    labels = torch.tensor([s.label for s in dataset.samples])
    report = {
        "model": base.spec, "adapter": str(args.adapter) if args.adapter else None,
        "images": len(labels), "accuracy": accuracy(preds, labels),
        "per_class_accuracy": per_class_accuracy(preds, labels, dataset.classnames),
    }
    if delta is not None:
        report["evaluation"] = evaluation_report(torch.cat(zero_shot), logits, labels,
                                                 dataset.classnames)
        report["held_out"] = {"evaluation": delta.config.evaluation,
                              "calibration": delta.config.calibration}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"accuracy: {report['accuracy']:.4f} ({len(labels)} images)")
        for name, acc in report["per_class_accuracy"].items():
            print(f"  {name}: {acc:.4f}")
        if delta is not None:
            zero = report["evaluation"]["zero_shot"]["accuracy"]
            print(f"zero-shot on the same images: {zero:.4f}")
    return 0


def cmd_export(args) -> int:
    from .delta import Delta
    from .export import write_open_clip

    if args.format == "delta":
        Delta.load(args.adapter).save(args.out)
    else:
        base, delta = _load_adapter(args)
        write_open_clip(base, delta, args.out)
    print(json.dumps({"format": args.format, "out": str(args.out),
                      "files": sorted(p.name for p in Path(args.out).iterdir())}))
    return 0


def cmd_classify(args) -> int:
    from .classify import Classifier, calibration_for, resolve_templates
    from .delta import Delta

    if args.adapter:
        delta = Delta.load(args.adapter)
        classnames = delta.config.classnames
        templates = resolve_templates(args.template) if args.template else delta.config.templates
        if args.classes:
            raise ValueError("--classes is for zero-shot; an adapter brings its own classes")
    else:
        if not args.classes:
            raise ValueError("zero-shot classification needs --classes a,b,c")
        delta = None
        classnames = [c.strip() for c in args.classes.split(",") if c.strip()]
        templates = resolve_templates(args.template)
    temperature, threshold, problems = calibration_for(
        delta.config.to_dict() if delta is not None else None,
        own_classes=delta is not None and templates == delta.config.templates,
        calibrated=args.calibrated, reject_unknown=args.reject_unknown,
        threshold=args.threshold)
    if problems:
        raise ValueError("; ".join(problems))
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    base = _load_base(args, args.model or delta.config.base_model) if delta is not None \
        else _load_base(args)
    predictions = Classifier(base).classify(args.images, classnames, templates, delta=delta,
                                            top_k=args.top_k, temperature=temperature,
                                            threshold=threshold)
    for path, pred in zip(args.images, predictions):
        print(json.dumps({"image": path} | pred.to_dict()))
    return 0


def cmd_info(args) -> int:
    from .delta import CONFIG_NAME, WEIGHTS_NAME, Delta

    delta = Delta.load(args.adapter_dir)
    directory = Path(args.adapter_dir)
    info = delta.config.to_dict() | {
        "tensors": len(delta.tensors), "trainable_count": delta.numel(),
        "files": {name: (directory / name).stat().st_size for name in (CONFIG_NAME, WEIGHTS_NAME)},
    }
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def cmd_pretrain_mini(args) -> int:
    from tqdm import tqdm

    from .models import local_checkpoint_path
    from .pretrain import ARCH, PretrainConfig, load_fashion_mnist, pretrain_mini

    data = load_fashion_mnist("train", args.data)  # fails early, naming the install command
    out = local_checkpoint_path(ARCH, args.cache_dir).parent
    config = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, limit=args.limit)
    bar = tqdm(unit="step", desc=f"pretrain {ARCH}", disable=args.quiet, file=sys.stderr)

    def on_step(step, total, loss):
        bar.total = total
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(1)

    record = pretrain_mini(out, config, data_root=args.data, on_step=on_step,
                           data=data if args.limit else None)
    bar.close()
    print(json.dumps(record | {"out": str(out)}))
    return 0


def _train_flags() -> list[dataclasses.Field]:
    return TrainConfig.exposed_fields() + TrainConfig.runtime_fields()


class _Given(argparse.Action):
    """Stores the value and notes that the flag was given (a recipe does not override it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given_flags = getattr(namespace, "given_flags", frozenset()) | {self.dest}


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability from 0 to 1")
    return value


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per user-set field of the training spec, with the spec's default and help."""
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help="start from a named recipe; flags given override it: "
                        + "; ".join(f"{r.name}: {r.description} ("
                                    + ", ".join(f"{k} {v}" for k, v in r.values.items()) + ")"
                                    for r in RECIPES.values()))
    p.set_defaults(given_flags=frozenset())
    for f in _train_flags():
        kwargs = {"dest": f.name, "default": f.default, "action": _Given,
                  "help": f"{f.metadata['help']} (default: {f.default})"}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.name in AUTO_FIELDS:
            kwargs["type"] = number_or_auto(type(f.default))
            kwargs["help"] = kwargs["help"][:-1] + "; or auto)"
        elif not isinstance(f.default, str):
            kwargs["type"] = type(f.default)
        p.add_argument("--" + input_name(f).replace("_", "-"), **kwargs)


def _model_options(p: argparse.ArgumentParser, required: bool, weights_dir: str | None
                   ) -> None:
    p.add_argument("--model", required=required, default=None,
                   help="base model spec: ARCH, ARCH:TAG (e.g. ViT-B-16:openai) or ARCH:PATH; "
                        "clipfit-tiny runs offline with random weights. With --adapter: where "
                        "to load the adapter's base from (its fingerprint must match)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--cache-dir", default=weights_dir,
                   help=f"weights directory: download cache and home of clipfit-mini "
                        f"(default: {weights_dir})")
    p.add_argument("--offline", action="store_true",
                   help="never download: fail at once when weights are not cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class _Commands(argparse._SubParsersAction):
    """Sub-commands; one added with ``fill_later`` gets its options only when it is chosen
    (they come from a module that loads torch)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fillers: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def fill_later(self, name: str, fill: Callable[[argparse.ArgumentParser], None]) -> None:
        self._fillers[name] = fill

    def __call__(self, parser, namespace, values, option_string=None):
        fill = self._fillers.pop(values[0], None)
        if fill is not None:
            fill(self.choices[values[0]])
        super().__call__(parser, namespace, values, option_string)


def _pretrain_mini_options(p: argparse.ArgumentParser, weights_dir: str | None) -> None:
    from .pretrain import FASHION_MNIST_DIR, PretrainConfig

    pre = PretrainConfig()
    p.add_argument("--data", default=FASHION_MNIST_DIR,
                   help=f"folder with Fashion-MNIST's *-ubyte.gz files (default {FASHION_MNIST_DIR})")
    p.add_argument("--cache-dir", default=weights_dir,
                   help=f"weights directory to write WEIGHTS_DIR/clipfit-mini/ into "
                        f"(default: {weights_dir})")
    p.add_argument("--epochs", type=int, default=pre.epochs)
    p.add_argument("--batch-size", type=int, default=pre.batch_size)
    p.add_argument("--lr", type=float, default=pre.lr)
    p.add_argument("--seed", type=int, default=pre.seed)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--quiet", action="store_true")


def _export_options(p: argparse.ArgumentParser, weights_dir: str | None) -> None:
    from .export import FORMATS

    p.add_argument("adapter", help="delta directory")
    p.add_argument("--format", choices=FORMATS, default="open_clip",
                   help="open_clip: the base with the delta merged (open_clip_model."
                   "safetensors, open_clip_config.json, clipfit_classes.json); delta: the two "
                   "delta files")
    p.add_argument("--out", required=True, help="folder to write (created)")
    _model_options(p, required=False, weights_dir=weights_dir)


def build_parser(weights_dir: str | Path | None, extend=None) -> argparse.ArgumentParser:
    """The parser; ``weights_dir`` is the default of ``--cache-dir`` (None: no default, for a
    caller that runs none of the library's commands); ``extend(subparsers)`` may add commands
    (the front door adds serve/worker/keys/remote)."""
    weights_dir = None if weights_dir is None else str(weights_dir)
    parser = argparse.ArgumentParser(
        prog="clipfit", description="Few-shot CLIP fine-tuning with ClipFit.")
    parser.add_argument("--version", action="version", version=f"clipfit {__version__}")
    parser.register("action", "parsers", _Commands)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="list the tensors ClipFit trains, then the total")
    p.add_argument("arch", help="open_clip architecture, e.g. ViT-B-16 (random weights)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train a delta on an image folder or CSV manifest")
    p.add_argument("data", help="folder with one sub-folder per class, or a path,label CSV")
    p.add_argument("--out", required=True, help="directory for the two delta files")
    _model_options(p, required=True, weights_dir=weights_dir)
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy on every image of a dataset, among its classes")
    p.add_argument("data")
    p.add_argument("--adapter", help="delta directory (or give --model for zero-shot)")
    _model_options(p, required=False, weights_dir=weights_dir)
    p.add_argument("--template", default=None, help="default: the adapter's, or 'default'")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("classify", help="top-k labels for images, one JSON object per image")
    p.add_argument("images", nargs="+")
    p.add_argument("--adapter", help="delta directory (or give --model and --classes)")
    _model_options(p, required=False, weights_dir=weights_dir)
    p.add_argument("--classes", help="comma-separated class names (zero-shot)")
    p.add_argument("--template", default=None)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--no-calibration", dest="calibrated", action="store_false",
                   help="plain probabilities: not divided by the adapter's fitted temperature "
                        "(it applies to the adapter's own classes and templates only)")
    p.add_argument("--reject-unknown", action="store_true",
                   help="label 'unknown' when the top calibrated probability is below the "
                        "adapter's fitted threshold")
    p.add_argument("--threshold", type=_probability, default=None, metavar="P",
                   help="label 'unknown' when the top probability is below P (0 to 1)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("pretrain-mini",
                       help="build the offline base model clipfit-mini from Fashion-MNIST")
    sub.fill_later("pretrain-mini", lambda p: _pretrain_mini_options(p, weights_dir))
    p.set_defaults(func=cmd_pretrain_mini)

    p = sub.add_parser("export", help="a delta as a merged open_clip checkpoint (or its "
                       "delta files) in a folder")
    sub.fill_later("export", lambda p: _export_options(p, weights_dir))
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="print a delta's metadata")
    p.add_argument("adapter_dir")
    p.set_defaults(func=cmd_info)
    if extend is not None:
        extend(sub)
    return parser


def main(argv: list[str] | None = None, *, weights_dir: str | Path, extend=None) -> int:
    """Run one command; ``weights_dir`` and ``extend`` as in :func:`build_parser`."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(weights_dir, extend).parse_args(argv)
    if args.command in ("eval", "classify") and not (args.adapter or args.model):
        print("clipfit: error: give --adapter DIR or --model SPEC", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"clipfit: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # raised by a command that loaded these modules already
        from .models import WeightsUnavailableError
        from .train import TrainingCancelled

        if isinstance(e, TrainingCancelled):
            print(f"clipfit: {e}", file=sys.stderr)
            return 130
        if isinstance(e, WeightsUnavailableError):
            print(f"clipfit: error: {e}", file=sys.stderr)
            return 2
        raise

