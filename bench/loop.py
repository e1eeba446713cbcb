"""The loop, measured: capture -> review -> retrain -> compare -> promote, round after round,
against capturing the same number of images at random, and zero-shot.

    python -m bench.loop                          # clipfit-mini, sketch, 3 seeds x 3 rounds
    python -m bench.loop --domain blur --seeds 0 --rounds 2 --stream 500

Starts ``clipfit serve`` (SQLite, its in-process worker, auth off) and drives it through the
light client only, as a user would. Per seed: a round-0 adapter from ``--shots`` images per
class of the domain's training split, trained twice under two names (the training is
deterministic, so both start equal: asserted); ``prod`` points at each. Each round then:

1. *loop*: capture on for the first name (``below_confidence`` ``--below``, or with
   ``--below-quantile Q`` the Q-quantile of the top probabilities ``NAME@prod`` gives the
   first ``--probe`` images of the round's stream, classified with capture off first, as an
   operator would read it off the served histogram; or a random ``--rate``; at most
   ``--cap`` per round, as a ``max_per_day`` raised by ``--cap`` each round), ``--stream``
   new training-split images classified through ``NAME@prod``;
2. *random*: capture on for the second name with ``sample_rate`` 1 and a cap of exactly as
   many images as the loop captured this round, the same stream in a shuffled order: a
   uniform random sample of the same size (what any service can do);
3. a simulated reviewer labels every pending capture with its true class (bulk labels);
4. both names are retrained with ``promote: auto`` and ``alias: prod`` and the jobs awaited;
5. capture is turned off (so the test set is never captured: checked) and every version is
   scored on the fixed test set (``--test-per-class`` images per class of the test split,
   the same for every seed and round), with what ``prod`` serves and zero-shot.

Reported per round: the mean test accuracy over the seeds with a 95% t interval, for the
loop's and the random arm's newest versions and what ``prod`` serves, and zero-shot; whether
promotion ever moved ``prod`` to a version worse on the test set than the one it replaced.
Results: OUT/loop.json and OUT/loop.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.classify_throughput import Server, free_port

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}  # Student's t, two-sided 95%, by degrees of freedom
ARMS = ("loop", "random")
PAGE = 500  # captures labelled per bulk request (the API's limit)
BATCH = 50  # images per classify request


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Pool:
    """Images (PNG bytes) with their class indices."""

    images: list[bytes]
    labels: list[int]

    def take(self, idx) -> Pool:
        return Pool([self.images[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class Data:
    classnames: list[str]
    train: Pool  # shots and streams are drawn from it, per seed
    test: Pool  # fixed: never captured, never trained on


def domain_data(domain: str, test_per_class: int, train_limit: int) -> Data:
    """Fashion-MNIST in one of bench.domains' domains (needs the Debian package
    dataset-fashion-mnist, as clipfit-mini does)."""
    from bench.domains import DOMAINS
    from clipfit_core.pretrain import ITEMS, load_fashion_mnist

    train_items, train_labels = load_fashion_mnist("train")
    test_items, test_labels = load_fashion_mnist("test")
    rng = np.random.default_rng(1234)  # fixed: the same pools for every run
    train_idx = rng.permutation(len(train_labels))[:train_limit]
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(test_labels == c))[
        :test_per_class] for c in range(len(ITEMS))])
    def to_pool(items, labels) -> Pool:
        return Pool([png(x) for x in DOMAINS[domain](items)], [int(v) for v in labels])

    return Data(list(ITEMS), to_pool(train_items[train_idx], train_labels[train_idx]),
                to_pool(test_items[test_idx], test_labels[test_idx]))


def seed_split(data: Data, seed: int, shots: int, stream: int, rounds: int
               ) -> tuple[Pool, list[Pool]]:
    """``shots`` per class for round 0, then one stream of ``stream`` other images per
    round, drawn for ``seed``."""
    rng = random.Random(seed)
    order = list(range(len(data.train.labels)))
    rng.shuffle(order)
    picked, rest, per_class = [], [], {}
    for i in order:
        c = data.train.labels[i]
        if per_class.get(c, 0) < shots:
            per_class[c] = per_class.get(c, 0) + 1
            picked.append(i)
        else:
            rest.append(i)
    if len(rest) < stream * rounds:
        raise SystemExit(f"{len(rest)} images left for {rounds} streams of {stream}")
    return data.train.take(picked), [data.train.take(rest[r * stream:(r + 1) * stream])
                                     for r in range(rounds)]


def ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval); half-width NaN for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(
        len(values))


@dataclass
class Loop:
    """One seed's two names on a running service (the light client ``cf``)."""

    cf: object
    data: Data
    seed: int
    args: argparse.Namespace
    names: dict[str, str] = field(default_factory=dict)
    captured_total: dict[str, int] = field(default_factory=dict)

    def accuracy(self, reference: str | None) -> float:
        """Test-set accuracy of an adapter (id or name@alias), or zero-shot (None)."""
        right = 0
        test = self.data.test
        for i in range(0, len(test.images), BATCH):
            chunk = test.images[i:i + BATCH]
            kw = {"adapter": reference} if reference else {
                "base_model": self.args.model, "classes": self.data.classnames}
            answers = self.cf.classify(chunk, top_k=1, **kw)
            right += sum(a.top_k[0][0] == self.data.classnames[y]
                         for a, y in zip(answers, test.labels[i:i + BATCH]))
        return right / len(test.images)

    def train_round0(self, shots: Pool) -> dict[str, str]:
        pairs = [(img, self.data.classnames[y]) for img, y in zip(shots.images, shots.labels)]
        ids = {}
        for arm in ARMS:
            name = f"{arm}-s{self.seed}-{int(time.time())}"
            with tempfile.TemporaryDirectory() as tmp:  # the client uploads files
                files = []
                for i, (img, label) in enumerate(pairs):
                    path = Path(tmp) / f"shot{i}.png"
                    path.write_bytes(img)
                    files.append((path, label))
                job = self.cf.jobs.create(files, base_model=self.args.model, name=name,
                                          seed=self.seed, **self.args.hyperparameters)
            job = self.cf.jobs.wait(job.id, timeout=3600)
            if job.status != "succeeded":
                raise SystemExit(f"round-0 job {job.id} {job.status}: {job.error}")
            self.cf.aliases.set(name, "prod", version=1)
            self.names[arm], ids[arm] = name, job.adapter_id
            self.captured_total[arm] = 0
        return ids


def run_round(lp: Loop, r: int, pool: Pool) -> dict:
    """One round for both names; what it captured, trained and promoted."""
    cf, args, names = lp.cf, lp.args, lp.names
    out: dict = {"round": r}
    rng = random.Random(lp.seed * 1000 + r)
    orders = {"loop": list(range(len(pool.images)))}
    shuffled = orders["loop"][:]
    rng.shuffle(shuffled)
    orders["random"] = shuffled
    for arm in ARMS:
        ref = f"{names[arm]}@prod"
        if arm == "loop":
            cap, below = lp.captured_total[arm] + args.cap, args.below
            if args.below_quantile is not None:  # as an operator sets it from what is served
                below = low_confidence(cf, ref, pool, args.probe, args.below_quantile)
                out["below_confidence"] = below
            cf.adapters.set_capture(ref, below_confidence=below, sample_rate=args.rate,
                                    max_per_day=cap, retention_days=30)
        else:
            k = out["loop"]["captured"]
            if k == 0:
                out[arm] = {"captured": 0}
                continue
            cf.adapters.set_capture(ref, sample_rate=1.0,
                                    max_per_day=lp.captured_total[arm] + k, retention_days=30)
        # each file's name tells the simulated reviewer its truth (the model never sees it)
        truth = {}
        for i in range(0, len(orders[arm]), BATCH):
            idx = orders[arm][i:i + BATCH]
            files = []
            for j in idx:
                fname = f"r{r}-{j}.png"
                truth[fname] = lp.data.classnames[pool.labels[j]]
                files.append((fname, pool.images[j]))
            classify_named(cf, files, ref)
        pending = wait_captures(cf, ref, lp.captured_total[arm])
        items = [{"id": c.id, "label": truth[c.filename]} for c in pending]
        for i in range(0, len(items), PAGE):
            cf.adapters.label_captures(ref, items[i:i + PAGE])
        lp.captured_total[arm] += len(items)
        out[arm] = {"captured": len(items),
                    "rules": dict(sorted(count_rules(pending).items()))}
    for arm in ARMS:
        cf.adapters.disable_capture(f"{names[arm]}@prod")
    for arm in ARMS:
        if not out[arm]["captured"]:
            continue
        before = prod_of(cf, names[arm])
        job = cf.adapters.retrain(f"{names[arm]}@prod", promote="auto", alias="prod")
        job = cf.jobs.wait(job.id, timeout=3600)
        if job.status != "succeeded":
            raise SystemExit(f"retrain {job.id} {job.status}: {job.error}")
        comparison = cf.adapters.get(job.adapter_id).metrics.get("comparison", {})
        out[arm] |= {"job": job.id, "version": job.adapter_id, "previous": before,
                     "benchmark_images": comparison.get("images"),
                     "benchmark": {k: comparison.get(k, {}).get("accuracy")
                                   for k in ("candidate", "previous", "zero_shot")},
                     "vs_previous": comparison.get("vs_previous"),
                     "promoted": prod_of(cf, names[arm]) == job.adapter_id}
    return out


def low_confidence(cf, ref: str, pool: Pool, probe: int, quantile: float) -> float:
    """The ``quantile`` of the top probabilities ``ref`` answers for the first ``probe``
    images of the round's stream, classified with capture off (what an operator reads off
    the served confidence histogram before choosing ``below_confidence``)."""
    tops = []
    for i in range(0, min(probe, len(pool.images)), BATCH):
        answers = cf.classify(pool.images[i:min(i + BATCH, probe)], adapter=ref, top_k=1)
        tops += [a.top_k[0][1] for a in answers]
    tops.sort()
    return round(min(1.0, max(0.0001, tops[int(quantile * (len(tops) - 1))])), 4)


def classify_named(cf, files: list[tuple[str, bytes]], ref: str) -> None:
    """Classify with the files' own names (the captures keep them)."""
    cf.request("POST", "/v1/classify", data={"adapter_id": ref, "top_k": "3"},
               files=[("images", (name, data, "image/png")) for name, data in files],
               idempotent=True)


def wait_captures(cf, ref: str, before: int, settle: float = 3.0, timeout: float = 120):
    """The pending captures once the writer is done (no new one for ``settle`` s)."""
    deadline, last, steady = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        pending = list(cf.adapters.captures(ref, state="pending", limit=200))
        if len(pending) != last:
            last, steady = len(pending), time.monotonic()
        elif time.monotonic() - steady >= settle:
            return pending
        time.sleep(0.5)
    raise SystemExit(f"captures of {ref} still changing after {timeout:.0f} s")


def count_rules(captures) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in captures:
        counts[c.rule] = counts.get(c.rule, 0) + 1
    return counts


def prod_of(cf, name: str) -> str | None:
    return next((a.adapter_id for a in cf.aliases.list(name=name) if a.alias == "prod"), None)


def run_seed(cf, data: Data, seed: int, args) -> dict:
    shots, streams = seed_split(data, seed, args.shots, args.stream, args.rounds)
    lp = Loop(cf, data, seed, args)
    ids = lp.train_round0(shots)
    acc0 = {arm: lp.accuracy(ids[arm]) for arm in ARMS}
    if acc0["loop"] != acc0["random"]:
        raise SystemExit(f"seed {seed}: the two round-0 adapters differ ({acc0}): training "
                         "is not deterministic here, so the arms would not start equal")
    rounds = [{"round": 0, "loop": {"newest": acc0["loop"], "prod": acc0["loop"]},
               "random": {"newest": acc0["random"], "prod": acc0["random"]}}]
    scores = {ids["loop"]: acc0["loop"], ids["random"]: acc0["random"]}
    for r, pool in enumerate(streams, start=1):
        t0 = time.monotonic()
        result = run_round(lp, r, pool)
        captures_before = sum(1 for arm in ARMS for _ in cf.adapters.captures(
            f"{lp.names[arm]}@prod", limit=200))
        for arm in ARMS:
            part = result[arm]
            if "version" in part:
                scores[part["version"]] = part["newest"] = lp.accuracy(part["version"])
                if part["previous"] not in scores:
                    scores[part["previous"]] = lp.accuracy(part["previous"])
                part["previous_test"] = scores[part["previous"]]
                part["worse_promoted"] = part["promoted"] and part["newest"] < part[
                    "previous_test"]
            else:  # nothing captured: the name stays where it was
                part["newest"] = rounds[-1][arm]["newest"]
            served = prod_of(cf, lp.names[arm])
            if served not in scores:
                scores[served] = lp.accuracy(served)
            part["prod"] = scores[served]
        captures_after = sum(1 for arm in ARMS for _ in cf.adapters.captures(
            f"{lp.names[arm]}@prod", limit=200))
        if captures_after != captures_before:
            raise SystemExit("the test set was captured: capture was not off")
        result["seconds"] = round(time.monotonic() - t0, 1)
        rounds.append(result)
        print(f"seed {seed} round {r}: " + "; ".join(
            f"{arm} captured {result[arm]['captured']}, newest {result[arm]['newest']:.4f}, "
            f"prod {result[arm]['prod']:.4f}" for arm in ARMS) + f" ({result['seconds']} s)",
            flush=True)
    return {"seed": seed, "names": lp.names, "zero_shot": lp.accuracy(None),
            "rounds": rounds}


def summarize(seeds: list[dict]) -> dict:
    rounds = len(seeds[0]["rounds"])
    table = []
    for r in range(rounds):
        row = {"round": r}
        for arm in ARMS:
            for what in ("newest", "prod"):
                row[f"{arm}_{what}"] = ci95([s["rounds"][r][arm][what] for s in seeds])
            row[f"{arm}_captured"] = sum(s["rounds"][r][arm].get("captured", 0)
                                         for s in seeds) / len(seeds)
        row["zero_shot"] = ci95([s["zero_shot"] for s in seeds])
        table.append(row)
    promotions = [(s["seed"], r["round"], arm) for s in seeds for r in s["rounds"][1:]
                  for arm in ARMS if r[arm].get("promoted")]
    worse = [(s["seed"], r["round"], arm) for s in seeds for r in s["rounds"][1:]
             for arm in ARMS if r[arm].get("worse_promoted")]
    last, first = table[-1], table[0]
    return {"table": table, "promotions": len(promotions), "worse_promotions": worse,
            "gain_over_round0_points": round(100 * (last["loop_newest"][0]
                                                    - first["loop_newest"][0]), 2),
            "loop_minus_random_points": round(100 * (last["loop_newest"][0]
                                                     - last["random_newest"][0]), 2)}


def markdown(summary: dict, args) -> str:
    def cell(v):
        mean, half = v
        return f"{100 * mean:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")

    lines = [f"`python -m bench.loop {' '.join(args.argv)}`".replace(" `", "`"), "",
             ("| round | loop: newest | loop: prod | captured | random: newest | random: prod "
             "| zero-shot |"), "|---|---|---|---|---|---|---|"]
    for row in summary["table"]:
        lines.append(f"| {row['round']} | {cell(row['loop_newest'])} | {cell(row['loop_prod'])}"
                     f" | {row['loop_captured']:.0f} | {cell(row['random_newest'])} | "
                     f"{cell(row['random_prod'])} | {cell(row['zero_shot'])} |")
    lines += ["", (f"Test accuracy (%), mean ± 95% t interval over {len(args.seeds)} seed(s). "
              f"Loop after {len(summary['table']) - 1} rounds vs round 0: "
              f"{summary['gain_over_round0_points']:+.2f} points; vs random: "
              f"{summary['loop_minus_random_points']:+.2f} points. Promotions: "
              f"{summary['promotions']}, to a version worse on the test set: "
              f"{len(summary['worse_promotions'])}.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, data: Data | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.loop",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipfit-mini")
    parser.add_argument("--domain", default="sketch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--stream", type=int, default=1000, help="images per round")
    parser.add_argument("--cap", type=int, default=100, help="captures per round")
    parser.add_argument("--below", type=float, default=0.5, help="below_confidence rule")
    parser.add_argument("--below-quantile", type=float, help="instead of --below: that "
                        "quantile of the top probabilities served for the first --probe "
                        "images of each round's stream (classified with capture off)")
    parser.add_argument("--probe", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.02, help="sample_rate rule")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", default="auto")
    parser.add_argument("--lr", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/loop"))
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.hyperparameters = {"epochs": args.epochs, "lr": args.lr, "batch_size": "auto",
                            "crop_min": 1.0, "alpha": 0.5, "val_fraction": 0.25}
    if data is None:
        data = domain_data(args.domain, args.test_per_class,
                           train_limit=args.shots * 10 * 4 + args.stream * args.rounds * 2)
    from clipfit.client import Client

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipfit-loop-") as tmp:
        server = Server(args.model, "cpu", Path(tmp), free_port(), extra_env={
            "CLIPFIT_AUTH": "false", "CLIPFIT_RATE_LIMIT": "",
            "CLIPFIT_MAX_ADAPTERS": "0"})
        try:
            server.wait_ready(180)
            with Client(server.url, "", timeout=600) as cf:
                seeds = [run_seed(cf, data, seed, args) for seed in args.seeds]
        finally:
            server.stop()
    summary = summarize(seeds)
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("out",)},
              "seeds": seeds, "summary": summary}
    (args.out / "loop.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "loop.md").write_text(markdown(summary, args))
    print(markdown(summary, args))
    return result


if __name__ == "__main__":
    main()
