"""The ``clipfit`` command: the library's commands (params, train, eval, classify, info,
pretrain-mini) plus the service's ``serve``, ``worker``, ``keys`` and ``blobs``, and ``remote`` (a
running service's jobs, adapters and classification, over HTTP).

Starting it loads none of the server's dependencies: ``remote`` (the client's command, which
is all a plain ``pip install clipfit`` can run) reads no service configuration, and each other
command imports its modules when it runs. Without ``clipfit[server]`` those commands stop
with one line that says how to install it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from clipfit_core import cli as core_cli

if TYPE_CHECKING:
    from registry.settings import Settings

SERVER_INSTALL = "pip install 'clipfit[server]'"
OWN_PACKAGES = {"clipfit", "clipfit_core", "registry", "api", "worker", "service"}


class ConfigurationError(ValueError):
    """A bad ``CLIPFIT_*`` variable or ``.env`` line."""


def _settings(args=None, **overrides) -> Settings:
    """The environment's settings, with ``--data-dir`` taking precedence."""
    from pydantic import ValidationError

    from registry.settings import Settings

    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    try:
        return Settings(**overrides)
    except ValidationError as e:  # say which variable
        problems = "; ".join(f"CLIPFIT_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}"
                             for err in e.errors())
        raise ConfigurationError(f"invalid configuration: {problems}") from None


def _command(argv: list[str]) -> str | None:
    """The command word of a ``clipfit`` command line (the top level has only flags
    that take no value), or None (``clipfit --help``, ``clipfit --version``)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _missing_dependency(e: ModuleNotFoundError) -> bool:
    """True when ``e`` is a third-party module that only the server extras install."""
    return bool(e.name) and e.name.split(".")[0] not in OWN_PACKAGES


def _needs_server(command: str | None, e: ModuleNotFoundError) -> int:
    what = f"'clipfit {command}'" if command else "this command"
    print(f"clipfit: error: {what} needs the server's dependencies (no module named "
          f"{e.name!r}); install them with: {SERVER_INSTALL}", file=sys.stderr)
    return 2


def cmd_serve(args) -> int:
    from .serve import ServeOptions, serve

    return serve(_settings(args), ServeOptions(
        host=args.host, port=args.port, worker=not args.no_worker, migrate=not args.no_migrate,
        log_level=args.log_level, access_log=args.access_log))


def cmd_worker(args) -> int:
    from .serve import run_worker

    return run_worker(_settings(args), concurrency=args.concurrency, pool=args.pool,
                      hostname=args.hostname, log_level=args.log_level)


def cmd_keys(args) -> int:
    """Tenants' API keys, straight on the configured database (migrated first), through the
    same use cases as the admin routes."""
    from registry.migrate import upgrade
    from service import tenants
    from service.context import Context
    from service.errors import DomainError, Invalid

    settings = _settings(args)
    upgrade(settings.sqlalchemy_url)
    ctx = Context.create(settings)
    try:
        if args.keys_command == "create":
            scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
            key, secret, created = tenants.create_key(ctx, tenant=args.tenant, scopes=scopes,
                                                      name=args.name, create_tenant=True)
            if created:
                print(f"clipfit: created tenant {args.tenant!r}", file=sys.stderr)
            print(secret)
            print(f"clipfit: key {key.id} ({key.prefix}...) for {args.tenant!r}, scopes "
                  f"{','.join(scopes)}: shown only now", file=sys.stderr)
        elif args.keys_command == "list":
            for key, tenant in tenants.list_keys(ctx):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.id}\t{key.prefix}...\t{tenant}\t"
                      f"{','.join(key.scopes)}\t{state}\t{key.name or ''}")
        else:
            tenants.revoke_key(ctx, args.key_id)
            print(f"clipfit: revoked key {args.key_id}", file=sys.stderr)
    except DomainError as e:
        raise ValueError("; ".join(e.problems) if isinstance(e, Invalid) else e.message) from e
    return 0


def cmd_blobs(args) -> int:
    """The blob store of the configured database: move bytes into it (or back), check that
    every blob has its bytes, collect what nothing names."""
    from datetime import timedelta

    from registry import blob_moves
    from registry.blobs import collect_garbage, use_blob_store
    from registry.db import get_engine
    from registry.migrate import upgrade

    settings = _settings(args)
    upgrade(settings.sqlalchemy_url)
    store, engine = use_blob_store(settings), get_engine(settings.sqlalchemy_url)
    where = store.location if store is not None else "the database"

    def progress(done: int, total: int) -> None:
        print(f"clipfit: {done}/{total} blobs moved", file=sys.stderr)

    if args.blobs_command == "migrate":
        if store is None:
            raise ValueError("CLIPFIT_BLOB_URL is 'database': name the store to move to")
        move = blob_moves.move_to_database if args.to_database else blob_moves.move_to_store
        moved = move(engine, store, batch=args.batch, progress=progress)
        print(f"clipfit: {moved.blobs} blobs ({moved.bytes} bytes) moved "
              f"{'into the database from' if args.to_database else 'to'} {where}")
    elif args.blobs_command == "verify":
        checked = blob_moves.verify(engine, store, deep=args.deep)
        print(f"clipfit: {checked.in_store} blobs in {where}, {checked.in_database} in the "
              f"database, {len(checked.missing)} missing, {len(checked.wrong)} with other "
              f"bytes, {checked.unnamed_objects} unnamed in the store")
        for sha256 in checked.missing[:20]:
            print(f"missing: {sha256}", file=sys.stderr)
        for sha256 in checked.wrong[:20]:
            print(f"other bytes: {sha256}", file=sys.stderr)
        return 0 if checked.ok else 1
    else:
        grace = settings.blob_gc_grace_hours if args.grace_hours is None else args.grace_hours
        collected = collect_garbage(engine, store=store, grace=timedelta(hours=grace),
                                    dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"clipfit: {verb} {collected.deleted} blobs ({collected.bytes_freed} bytes) "
              f"unnamed for {grace:g} h; {collected.adopted} found in the store with no row")
    return 0


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the REST API; with no configuration, with an "
                       "in-process worker on a SQLite file in the data directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", help="default $CLIPFIT_DATA_DIR or ./data")
    p.add_argument("--no-worker", action="store_true",
                   help="API only (standalone workers run 'clipfit worker')")
    p.add_argument("--no-migrate", action="store_true",
                   help="do not run 'alembic upgrade head' at start")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a standalone Celery worker on the configured broker "
                       "($CLIPFIT_BROKER_URL, $CLIPFIT_DATABASE_URL)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (one per GPU)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.add_argument("--hostname", help="Celery node name, e.g. gpu1@%%h")
    p.add_argument("--data-dir", help="default $CLIPFIT_DATA_DIR or ./data")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="create, list or revoke API keys (on the configured "
                       "database: $CLIPFIT_DATABASE_URL or the data directory's)")
    p.add_argument("--data-dir", help="default $CLIPFIT_DATA_DIR or ./data")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="print a new key (shown once); the tenant is created "
                        "when it does not exist")
    k.add_argument("--tenant", required=True, help="the tenant's name")
    k.add_argument("--scope", required=True, help="comma-separated: admin, train, classify, read")
    k.add_argument("--name", help="what the key is for")
    keys.add_parser("list", help="every key: id, prefix, tenant, scopes, state, name")
    k = keys.add_parser("revoke", help="revoke a key by its id")
    k.add_argument("key_id")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("blobs", help="the blob store ($CLIPFIT_BLOB_URL) of the configured "
                       "database: migrate, verify, gc")
    p.add_argument("--data-dir", help="default $CLIPFIT_DATA_DIR or ./data")
    blobs = p.add_subparsers(dest="blobs_command", required=True)
    b = blobs.add_parser("migrate", help="move the bytes kept in database rows into the blob "
                         "store, a verified batch per transaction (resumable: run it again)")
    b.add_argument("--to-database", action="store_true", help="the other way: back into the "
                   "rows (before leaving a store or downgrading)")
    b.add_argument("--batch", type=int, default=200, help="blobs per transaction")
    b = blobs.add_parser("verify", help="check that every blob has its bytes (exit 1 if not)")
    b.add_argument("--deep", action="store_true", help="read and hash every blob")
    b = blobs.add_parser("gc", help="delete the blobs nothing has named for the grace period "
                         "(the workers do this every CLIPFIT_BLOB_GC_INTERVAL_SECONDS)")
    b.add_argument("--grace-hours", type=float, help="default $CLIPFIT_BLOB_GC_GRACE_HOURS")
    b.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    p.set_defaults(func=cmd_blobs)

    from .remote import add_remote_commands

    add_remote_commands(sub)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The whole ``clipfit`` parser; the weights directory default comes from ``settings``
    (``CLIPFIT_WEIGHTS_DIR``, else ``~/.cache/clipfit/weights``)."""
    settings = settings or _settings()
    return core_cli.build_parser(settings.weights_dir, extend=add_service_commands)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    weights_dir = None  # remote commands use no service configuration: not read for them
    try:
        if command != "remote":
            try:
                weights_dir = _settings().weights_dir
            except ModuleNotFoundError as e:  # the client alone: its commands still list
                if command is not None or not _missing_dependency(e):
                    raise
        return core_cli.main(argv, weights_dir=weights_dir, extend=add_service_commands)
    except ConfigurationError as e:
        print(f"clipfit: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if not _missing_dependency(e):
            raise
        return _needs_server(command, e)


if __name__ == "__main__":
    sys.exit(main())
