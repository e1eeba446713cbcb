"""The ``clipfit`` command: the library's commands plus ``serve`` and ``worker``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from clipfit_core import cli as core_cli


def _apply_data_dir(args) -> None:
    """``--data-dir`` is ``CLIPFIT_DATA_DIR`` for this process (read before settings load)."""
    if getattr(args, "data_dir", None):
        os.environ["CLIPFIT_DATA_DIR"] = args.data_dir
    from registry.settings import get_settings

    get_settings.cache_clear()


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", force=True)
    for name in ("clipfit", "api", "worker", "registry", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())


def cmd_serve(args) -> int:
    _apply_data_dir(args)
    _configure_logging(args.log_level)
    import uvicorn

    from registry.migrate import upgrade
    from registry.settings import get_settings

    settings = get_settings()
    embedded = not settings.broker_url and not args.no_worker
    worker, lock = None, None
    if embedded:  # this process owns the data directory's jobs: one such server at a time
        from worker.embedded import lock_data_dir

        try:
            lock = lock_data_dir(settings.data_dir)  # held until serving ends
        except RuntimeError as e:
            print(f"clipfit: error: {e}", file=sys.stderr)
            return 2
    if not args.no_migrate:
        upgrade()
    if not args.no_worker:
        from worker.embedded import EmbeddedWorker, requeue_unfinished

        worker = EmbeddedWorker()
        worker.start()
        if embedded:
            requeue_unfinished()
    from api.app import app

    db = settings.sqlalchemy_url.split("://", 1)[0]
    broker = settings.celery_broker_url.split("://", 1)[0]
    print(f"clipfit: serving http://{args.host}:{args.port} (docs at /docs); database {db}, "
          f"broker {broker}, worker {'in process' if worker else 'none'}, "
          f"data dir {settings.data_dir}, base models {', '.join(settings.allowed_base_models)}",
          flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                    access_log=args.access_log)
    finally:
        if worker is not None:
            worker.stop()
        if lock is not None:
            lock.close()
    return 0


def cmd_worker(args) -> int:
    _apply_data_dir(args)
    from worker.celery_app import app

    argv = ["worker", f"--loglevel={args.log_level}", f"--concurrency={args.concurrency}",
            f"--pool={args.pool}"]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def extend(sub: argparse._SubParsersAction) -> None:
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


def main(argv: list[str] | None = None) -> int:
    return core_cli.main(argv, extend=extend)


if __name__ == "__main__":
    sys.exit(main())
