"""The ``clipfit`` command: the library's commands (params, train, eval, classify, info,
pretrain-mini) plus the service's ``serve``, ``worker`` and ``keys``, and ``remote`` (a
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
