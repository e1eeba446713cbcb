"""The ``clipfit`` command: the library's commands (params, train, eval, classify, info,
pretrain-mini) plus the service's ``serve``, ``worker`` and ``keys``, and ``remote`` (a
running service's jobs, adapters and classification, over HTTP)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from clipfit_core import cli as core_cli
from registry.settings import Settings


def _settings(args) -> Settings:
    """The environment's settings, with ``--data-dir`` taking precedence."""
    overrides = {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}
    return Settings(**overrides)


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
    """Tenants' API keys, straight on the configured database (migrated first)."""
    from registry import crud
    from registry.db import get_engine, session_scope
    from registry.migrate import upgrade
    from registry.models import SCOPES

    settings = _settings(args)
    upgrade(settings.sqlalchemy_url)
    with session_scope(get_engine(settings.sqlalchemy_url)) as session:
        if args.keys_command == "create":
            scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
            unknown = sorted(set(scopes) - set(SCOPES))
            if unknown or not scopes:
                raise ValueError(f"--scope takes a comma-separated list of {', '.join(SCOPES)}")
            tenant = crud.get_tenant_by_name(session, name=args.tenant)
            if tenant is None:
                tenant = crud.create_tenant(session, name=args.tenant)
                print(f"clipfit: created tenant {args.tenant!r}", file=sys.stderr)
            key, secret = crud.create_key(session, tenant_id=tenant.id, scopes=scopes,
                                          name=args.name)
            print(secret)
            print(f"clipfit: key {key.id} ({key.prefix}...) for {args.tenant!r}, scopes "
                  f"{','.join(scopes)}: shown only now", file=sys.stderr)
        elif args.keys_command == "list":
            names = {t.id: t.name for t in crud.list_tenants(session)}
            for key in crud.list_keys(session):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.id}\t{key.prefix}...\t{names.get(key.tenant_id)}\t"
                      f"{','.join(key.scopes)}\t{state}\t{key.name or ''}")
        elif crud.revoke_key(session, key_id=args.key_id) is None:
            raise ValueError(f"no key {args.key_id!r}")
        else:
            print(f"clipfit: revoked key {args.key_id}", file=sys.stderr)
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

    from .remote import add_remote_commands

    add_remote_commands(sub)


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The whole ``clipfit`` parser; the weights directory default comes from ``settings``
    (``CLIPFIT_WEIGHTS_DIR``, else ``~/.cache/clipfit/weights``)."""
    settings = settings or Settings()
    return core_cli.build_parser(settings.weights_dir, extend=add_service_commands)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
    except ValidationError as e:  # a bad CLIPFIT_* variable or .env line: say which
        problems = "; ".join(f"CLIPFIT_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}"
                             for err in e.errors())
        print(f"clipfit: error: invalid configuration: {problems}", file=sys.stderr)
        return 2
    return core_cli.main(argv, weights_dir=settings.weights_dir, extend=add_service_commands)


if __name__ == "__main__":
    sys.exit(main())
