"""Process wiring: ``clipfit serve`` (the API, with an in-process worker by default) and
``clipfit worker``. Each part gets the settings object; nothing here writes the environment."""

from __future__ import annotations

import fcntl
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from registry.settings import Settings

# every package of the project logs under its own name; --log-level applies to all of them
LOGGERS = ("clipfit", "clipfit_core", "api", "worker", "registry", "uvicorn")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    worker: bool = True
    migrate: bool = True
    log_level: str = "info"
    access_log: bool = False


def configure_logging(level: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", force=True)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def lock_data_dir(data_dir: Path):
    """One embedded service per data directory (it owns the jobs found running there)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "serve.lock", "w")  # noqa: SIM115 (held for the process lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise RuntimeError(f"another 'clipfit serve' is using {data_dir}; stop it or pass "
                           "another --data-dir") from e
    return handle


def first_admin_key(settings: Settings) -> str | None:
    """On a database with no key at all, the first admin key of the default tenant: the one
    in CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE when it is set (stored hashed, never printed), else a
    new one, printed once: it is never shown again (only its hash is stored).

    Raises:
        RuntimeError: the key file is missing, unreadable or not a valid key.
    """
    from registry.tenants import count_keys
    from service.context import Context
    from service.errors import Invalid
    from service.tenants import bootstrap_admin_key

    ctx = Context.create(settings)
    given = None
    path = settings.bootstrap_admin_key_file
    if path is not None:
        with ctx.reading() as session:
            if count_keys(session):
                return None  # bootstrapped before: the file is not needed any more
        try:
            given = path.read_text().strip()
        except OSError as e:
            raise RuntimeError(f"CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE={path}: cannot read it "
                               f"({e.strerror})") from e
    try:
        secret = bootstrap_admin_key(ctx, secret=given)
    except Invalid as e:
        raise RuntimeError(f"CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE={path}: not a clipfit key: "
                           f"{'; '.join(e.problems)}") from e
    if secret is None:
        return None
    if given is not None:
        print(f"clipfit: stored the first admin API key from {path} (prefix {secret[:12]})",
              flush=True)
        return secret
    print(f"clipfit: created the first admin API key (shown only now; keep it):\n"
          f"    {secret}\nclipfit: send it as 'Authorization: Bearer KEY'; make more with "
          "'clipfit keys create'", flush=True)
    return secret


def serve(settings: Settings, options: ServeOptions) -> int:
    configure_logging(options.log_level)
    import uvicorn

    from api.app import create_app
    from registry.db import get_engine
    from registry.migrate import upgrade

    embedded = not settings.broker_url and options.worker
    worker, lock, reconciler, deliverer = None, None, None, None
    if embedded:  # this process owns the data directory's jobs: one such server at a time
        try:
            lock = lock_data_dir(settings.data_dir)  # held until serving ends
        except RuntimeError as e:
            print(f"clipfit: error: {e}", file=sys.stderr)
            return 2
    if options.migrate:
        upgrade(settings.sqlalchemy_url)
    if settings.auth:
        try:
            first_admin_key(settings)
        except RuntimeError as e:
            print(f"clipfit: error: {e}", file=sys.stderr)
            return 2
    else:
        print("clipfit: WARNING: authentication is off (CLIPFIT_AUTH=false): anyone who reaches "
              "this port is an admin", file=sys.stderr, flush=True)
    if options.worker:
        from worker.celery_app import create_worker_app
        from worker.embedded import EmbeddedWorker, requeue_unfinished
        from worker.reconcile import Reconciler

        worker_app = create_worker_app(settings)
        worker = EmbeddedWorker(worker_app)
        worker.start()
        if embedded:
            requeue_unfinished(worker_app, get_engine(settings.sqlalchemy_url))
        reconciler = Reconciler(settings, lambda job_id, task: worker_app.send_task(
            task, args=[job_id])).start()
        from worker.webhooks import Deliverer

        deliverer = Deliverer(settings).start()
    app = create_app(settings)
    db = settings.sqlalchemy_url.split("://", 1)[0]
    broker = settings.celery_broker_url.split("://", 1)[0]
    print(f"clipfit: serving http://{options.host}:{options.port} (docs at /docs); database "
          f"{db}, broker {broker}, worker {'in process' if worker else 'none'}, data dir "
          f"{settings.data_dir}, base models {', '.join(settings.allowed_base_models)}",
          flush=True)
    try:
        uvicorn.run(app, host=options.host, port=options.port,
                    log_level=options.log_level.lower(), access_log=options.access_log)
    finally:
        if reconciler is not None:
            reconciler.stop()
        if deliverer is not None:
            deliverer.stop()
        if worker is not None:
            worker.stop()
        if lock is not None:
            lock.close()
    return 0


def run_worker(settings: Settings, *, concurrency: int, pool: str, hostname: str | None,
               log_level: str) -> int:
    from worker.celery_app import create_worker_app
    from worker.reconcile import Reconciler
    from worker.webhooks import Deliverer

    argv = ["worker", f"--loglevel={log_level}", f"--concurrency={concurrency}",
            f"--pool={pool}"]
    if hostname:
        argv += ["--hostname", hostname]
    app = create_worker_app(settings)
    reconciler = Reconciler(settings, lambda job_id, task: app.send_task(task, args=[job_id]))
    reconciler.start()
    deliverer = Deliverer(settings).start()  # webhooks: the workers send them, one at a time
    try:
        app.worker_main(argv)
    finally:
        reconciler.stop()
        deliverer.stop()
    return 0
