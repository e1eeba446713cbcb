"""How big the database gets with and without the blob store, for the demo's job and for a
5,000-image job: each stored exactly as ``POST /v1/jobs`` and the worker store it (the
dataset's images, the job, its adapter's delta), once with the bytes in the database
(``CLIPFIT_BLOB_URL=database``, as before the blob store) and once with the default folder
store, on SQLite (the embedded default) and PostgreSQL.

    python -m bench.db_size            # needs Fashion-MNIST: apt-get install dataset-fashion-mnist

The demo's job: 160 blurred Fashion-MNIST images (16 per class, scripts/demo.sh's training
set); the 5,000-image job: 500 per class, the same domain. The delta is clipfit-mini's shape
when its weights are here, else clipfit-tiny's (said in the output); deltas are tens of KB
either way, the images are what grows."""

from __future__ import annotations

import argparse
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _images(per_class: int, root: Path):
    from bench.domains import export
    from clipfit_core.data import load_dataset

    folder = export("blur", root / f"blur{per_class}", split="train", per_class=per_class)
    dataset = load_dataset(folder)  # as uploaded: the files' bytes
    return dataset.subset([replace(s, source=Path(s.source).read_bytes())
                           for s in dataset.samples])


def _delta(spec: str) -> tuple[bytes, dict]:
    """The trained tensors' bytes as the worker stores them (their values do not matter)."""
    from safetensors.torch import save

    from bench.domains import ITEMS
    from clipfit_core.delta import extract_delta
    from clipfit_core.models import create_base_model

    base = create_base_model(spec, device="cpu", allow_download=False)
    config = {"base_model": spec, "base_fingerprint": base.fingerprint,
              "classnames": list(ITEMS), "templates": ["a photo of a {}."]}
    return save(extract_delta(base.model)), config


def _size(url: str, store_root: Path) -> tuple[int, int]:
    """(database bytes, blob folder bytes)."""
    folder = sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file()) \
        if store_root.exists() else 0
    if url.startswith("sqlite"):
        import sqlite3

        path = url.split("///", 1)[1]
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Path(path).stat().st_size, folder
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0], folder


def measure(kind: str, mode: str, dataset, delta: tuple[bytes, dict], root: Path) -> dict:
    from registry import crud
    from registry.blobs import use_blob_store
    from registry.db import make_engine, session_scope
    from registry.migrate import upgrade
    from registry.settings import Settings

    data_dir = root / f"{kind}-{mode}-{len(dataset)}"
    data_dir.mkdir()
    name = None
    if kind == "sqlite":
        url = f"sqlite:///{data_dir / 'clipfit.sqlite3'}"
    else:
        name = f"clipfit_size_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        settings = Settings(database_url=url, data_dir=data_dir,
                            blob_url="database" if mode == "database" else "")
        use_blob_store(settings)
        empty = _size(url, data_dir / "blobs")[0]
        engine = make_engine(url)
        with session_scope(engine) as s:
            tenant = crud.create_tenant(s, name="bench")
            job = crud.create_job(s, tenant_id=tenant.id, classnames=dataset.classnames,
                                  images=dataset.samples, base_model="clipfit-tiny",
                                  templates=["a photo of a {}."], hyperparameters={})
            crud.store_adapter(s, job=job, weights=delta[0], config=delta[1], metrics={})
        engine.dispose()
        database, folder = _size(url, data_dir / "blobs")
        return {"database": database - empty, "folder": folder,
                "images": len(dataset), "image_bytes": sum(len(s.source) for s in
                                                           dataset.samples)}
    finally:
        if name:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.db_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, nargs="+", default=[16, 500],
                        help="images per class of each job (10 classes)")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"])
    args = parser.parse_args(argv)
    from clipfit_core.models import WeightsUnavailableError

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            delta, spec = _delta("clipfit-mini"), "clipfit-mini"
        except WeightsUnavailableError:  # not built here: the tiny model's shape
            delta, spec = _delta("clipfit-tiny"), "clipfit-tiny"
        print(f"delta: {spec}, {len(delta[0]):,} bytes")
        print("| job | images (bytes) | database | bytes in the database | in the blob "
              "folder | database, blob store vs bytes in it |")
        print("|---|---|---|---|---|---|")
        for per_class in args.per_class:
            dataset = _images(per_class, root)
            for kind in args.databases:
                before = measure(kind, "database", dataset, delta, root)
                after = measure(kind, "store", dataset, delta, root)
                label = "the demo's (16/class)" if per_class == 16 else f"{per_class}/class"
                print(f"| {label} | {before['images']:,} ({before['image_bytes']:,}) | {kind} | "
                      f"{before['database']:,} | {after['database']:,} + folder "
                      f"{after['folder']:,} | {after['database'] / before['database']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
