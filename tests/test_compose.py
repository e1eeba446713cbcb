"""docker-compose.yml, docker-compose.cpu.yml, Dockerfile and .dockerignore agree with the code.

No Docker engine is needed: the files are parsed and every command they run is checked
against the project (the clipfit argument parser, Alembic's, the settings, the routes).
"""

from __future__ import annotations

import ast
import configparser
import functools
import importlib
import importlib.util
import json
import posixpath
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from docker.utils.build import PatternMatcher, exclude_paths
from dockerfile_parse import DockerfileParser
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_REPLICAS = ROOT / "docker-compose.replicas.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"postgres", "redis", "migrate", "api", "worker"}
BACKING = {"postgres": "service_healthy", "redis": "service_healthy",
           "migrate": "service_completed_successfully"}


# --- loading ---------------------------------------------------------------------------------

class _Reset:
    """Compose's ``!reset`` tag: the key is removed from the merged model."""

    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader plus Compose's merge tags (``!reset``, ``!override``)."""


def _construct_reset(loader, node):
    return RESET


def _construct_override(loader, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)


def load_compose(path: Path) -> dict:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), \
        f"{path.name}: no services mapping"
    return data


def merge(base, override):
    """Compose's merge rules, as far as these files use them (mappings merge, !reset removes)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is RESET:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out
    return override


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def parser():
    """The full ``clipfit`` argument parser (the console script's)."""
    from clipfit.cli import build_parser

    return build_parser()


def built_here(service: dict) -> bool:
    """Whether the service runs the image built from this repository."""
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    return (ROOT / context).resolve() == ROOT


def argv_of(command) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), command
    return list(command)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def named_volumes(service: dict) -> dict[str, str]:
    """``{volume name: mount path}`` for the named (not bind-mounted) volumes of a service."""
    found = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type", "volume") == "volume" and vol.get("source"):
                found[vol["source"]] = vol["target"]
            continue
        source, _, rest = vol.partition(":")
        if rest and not source.startswith((".", "/", "~", "$")):
            found[source] = rest.split(":")[0]
    return found


def published_ports(service: dict) -> list[tuple[str, str]]:
    """``(published, target)`` pairs."""
    pairs = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            pairs.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        pairs.append((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return pairs


# --- what the commands must match -----------------------------------------------------------

def check_clipfit(parser, argv: list[str], where: str):
    """``clipfit SUBCOMMAND ...``: the subcommand exists and all its options parse."""
    assert argv and argv[0] == "clipfit", f"{where}: not a clipfit command: {argv}"
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse (exit {e.code})")
    assert callable(getattr(args, "func", None)), f"{where}: {argv} names no command"
    return args


def check_alembic(argv: list[str], where: str) -> None:
    """``alembic ...``: alembic is installed, the ini and the migrations are where it looks."""
    assert importlib.util.find_spec("alembic") is not None, "alembic is not installed"
    import alembic.config

    try:
        alembic.config.CommandLine().parser.parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse (exit {e.code})")
    ini = ROOT / "alembic.ini"
    assert ini.is_file(), "alembic.ini is missing"
    config = configparser.ConfigParser(defaults={"here": str(ROOT)})
    config.read(ini)
    scripts = Path(config.get("alembic", "script_location"))
    assert (scripts / "env.py").is_file(), f"{scripts}/env.py is missing"
    assert list((scripts / "versions").glob("*.py")), f"no migration in {scripts}/versions"


def check_command(parser, argv: list[str], where: str) -> None:
    if argv[0] == "clipfit":
        check_clipfit(parser, argv, where)
    elif argv[0] == "alembic":
        check_alembic(argv, where)
    else:
        pytest.fail(f"{where}: {argv[0]!r} is neither `clipfit` nor `alembic`")


def api_routes() -> set[str]:
    """Paths of the GET routes declared in api/ (decorators like ``@router.get("/x")``)."""
    found = set()
    for path in (ROOT / "api").rglob("*.py"):
        found |= set(re.findall(r"""@\w+\.get\(\s*["']([^"']+)["']""", path.read_text()))
    return found


def check_http_probe(test: list[str], port: str, where: str) -> str:
    """A ``python -c`` probe: valid Python, on the served port, of a real route. Returns it."""
    assert test[:2] == ["python", "-c"], f"{where}: expected a python -c probe, got {test}"
    code = test[2]
    compile(code, where, "exec")
    urls = re.findall(r"https?://[^'\"\s]+", code)
    assert len(urls) == 1, f"{where}: expected one URL in {code!r}"
    url = urlsplit(urls[0])
    assert str(url.port) == str(port), f"{where}: probes port {url.port}, serves {port}"
    assert url.path in api_routes(), f"{where}: {url.path} is not a route of the API"
    return url.path


def healthcheck_argv(test) -> list[str]:
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(rest[0])
    assert kind == "CMD", f"healthcheck test must start with CMD or CMD-SHELL: {test}"
    return rest


# --- docker-compose.yml -----------------------------------------------------------------------

def test_services_exist(services):
    missing = SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_backing_services_have_healthchecks(services, name):
    check = services[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_redis_persists_its_queue(services):
    redis = services["redis"]
    argv = argv_of(redis.get("command") or [])
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes", argv
    assert "/data" in named_volumes(redis).values(), "redis' /data is not on a volume"


def test_depends_on_conditions(services):
    for name in ("api", "worker"):
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, condition in BACKING.items():
            got = (deps.get(dep) or {}).get("condition")
            assert got == condition, f"{name} -> {dep}: condition {got!r}, want {condition!r}"
    migrate = services["migrate"].get("depends_on") or {}
    assert (migrate.get("postgres") or {}).get("condition") == "service_healthy", migrate
    assert str(services["migrate"].get("restart", "no")) == "no"
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on an unknown service {dep!r}"


def test_worker_reserves_an_nvidia_gpu(services):
    devices = (services["worker"].get("deploy", {}).get("resources", {})
               .get("reservations", {}).get("devices") or [])
    gpus = [d for d in devices if d.get("driver") == "nvidia"
            and "gpu" in (d.get("capabilities") or [])]
    assert gpus, f"worker reserves no NVIDIA GPU: {devices}"
    count = gpus[0].get("count", 0)
    assert count == "all" or int(count) >= 1 or gpus[0].get("device_ids"), gpus[0]


def test_api_is_published_and_checked(services, parser):
    api = services["api"]
    args = check_clipfit(parser, argv_of(api["command"]), "api.command")
    assert args.command == "serve" and args.host == "0.0.0.0", "api must listen on all interfaces"
    assert args.no_worker and args.no_migrate, "the compose api runs neither worker nor migrations"
    targets = [target for _, target in published_ports(api)]
    assert str(args.port) in targets, f"api serves port {args.port}, publishes {targets}"
    assert ("8000", "8000") in published_ports(api), published_ports(api)
    check = api.get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), "api has no healthcheck"
    path = check_http_probe(healthcheck_argv(check["test"]), str(args.port), "api.healthcheck")
    assert path == "/readyz", f"api's healthcheck should be readiness, probes {path}"


def test_commands_run_project_code(services, parser):
    built = {name: s for name, s in services.items() if built_here(s)}
    assert {"migrate", "api", "worker"} <= set(built), f"built from this repo: {sorted(built)}"
    for name, service in built.items():
        assert service.get("command"), f"{name}: no command (would run the image's CMD)"
        check_command(parser, argv_of(service["command"]), f"{name}.command")
    assert argv_of(built["migrate"]["command"])[:3] == ["alembic", "upgrade", "head"]
    worker = check_clipfit(parser, argv_of(built["worker"]["command"]), "worker.command")
    assert worker.command == "worker", worker


def test_worker_healthcheck_names_the_celery_app(services, monkeypatch, tmp_path):
    check = services["worker"].get("healthcheck") or {}
    if check.get("disable") or not check.get("test"):
        return
    argv = healthcheck_argv(check["test"])
    assert argv[0] == "celery", argv
    module = argv[argv.index("-A") + 1]
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    assert any(isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "app" for t in node.targets)
               for node in tree.body), f"{module} defines no module-level `app`"
    # What `celery -A` does: import the module (configured from the environment) and take `app`.
    from celery import Celery

    monkeypatch.setenv("CLIPFIT_DATA_DIR", str(tmp_path))
    app = getattr(importlib.import_module(module), "app", None)
    assert isinstance(app, Celery), f"{module}.app is {app!r}, not a Celery app"


def test_volumes_are_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = {v for s in services.values() for v in named_volumes(s)}
    assert used <= declared, f"volumes used but not declared: {sorted(used - declared)}"
    assert declared <= used, f"volumes declared but unused: {sorted(declared - used)}"
    assert "/var/lib/postgresql/data" in named_volumes(services["postgres"]).values()


def test_api_and_worker_share_the_blob_store(services):
    """Images the API stores the worker trains on, deltas the worker stores the API serves:
    with the default blob store (a folder in the data directory), both mount one volume
    there, and the image makes that folder its user's (a new volume copies its owner)."""
    from dockerfile_parse import DockerfileParser

    from registry.blobstore import blob_url
    from registry.settings import Settings

    folders = set()
    for name in ("api", "worker"):
        env = env_of(services[name])
        assert not env.get("CLIPFIT_BLOB_URL"), name  # the default: data_dir/blobs
        folder = blob_url(Settings(data_dir=Path(env["CLIPFIT_DATA_DIR"]))).removeprefix(
            "file://")
        assert folder in named_volumes(services[name]).values(), name
        folders.add((folder, next(v for v, path in named_volumes(services[name]).items()
                                  if path == folder)))
    assert len(folders) == 1  # the same volume, at the same place
    dockerfile = DockerfileParser(path=str(ROOT / "Dockerfile")).content
    folder = next(iter(folders))[0]
    assert f"mkdir -p /app {folder}" in dockerfile and f"chown clipfit:clipfit /data {folder}" \
        in dockerfile


def test_environment_matches_settings_and_services(compose, services):
    from clipfit_core.models import list_architectures, parse_model_spec
    from registry.settings import Settings

    fields = set(Settings.model_fields)
    pg = env_of(services["postgres"])
    architectures = set(list_architectures())
    for name in ("migrate", "api", "worker"):
        env = env_of(services[name])
        for key in env:
            if key.startswith("CLIPFIT_"):
                assert key[len("CLIPFIT_"):].lower() in fields, f"{name}: unknown setting {key}"
        db = urlsplit(env["CLIPFIT_DATABASE_URL"])
        assert db.scheme == "postgresql+psycopg", db.scheme
        assert db.hostname in services and db.hostname == "postgres", db.hostname
        assert (db.username, db.password, db.path.lstrip("/")) == (
            pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]), \
            f"{name}: database URL does not match the postgres service"
        broker = urlsplit(env["CLIPFIT_BROKER_URL"])
        assert broker.scheme == "redis" and broker.hostname in services, broker
        assert re.fullmatch(r"auto|cpu|cuda(:\d+)?", env.get("CLIPFIT_DEVICE", "auto"))
        for spec in env.get("CLIPFIT_BASE_MODELS", "").split(","):
            arch, tag = parse_model_spec(spec)
            assert arch in architectures, f"{name}: unknown architecture in {spec!r}"
            if tag and "/" not in tag:
                import open_clip

                assert open_clip.get_pretrained_cfg(arch, tag), f"unknown tag in {spec!r}"
    for name in ("api", "worker"):
        env = env_of(services[name])
        mounts = named_volumes(services[name])
        assert mounts.get("weights") == env["CLIPFIT_WEIGHTS_DIR"], \
            f"{name}: the weights volume is not mounted at CLIPFIT_WEIGHTS_DIR"


def test_cpu_override_removes_the_gpu_only(compose):
    override = load_compose(COMPOSE_CPU)
    assert set(override["services"]) <= set(compose["services"]), "override adds services"
    merged = merge(compose, override)
    worker = merged["services"]["worker"]
    devices = (worker.get("deploy", {}).get("resources", {}).get("reservations", {})
               .get("devices") or [])
    assert not [d for d in devices if d.get("driver") == "nvidia"], devices
    assert env_of(worker).get("CLIPFIT_DEVICE") == "cpu"
    for name, service in compose["services"].items():
        if name != "worker":
            assert merged["services"][name] == service, f"the CPU override changes {name}"


# --- docker-compose.replicas.yml: several api replicas, HAProxy, an object store ------------

@pytest.fixture(scope="module")
def replicas(compose) -> dict:
    """docker-compose.yml merged with the replicas overlay (as ``-f A -f B`` merges them)."""
    return merge(compose, load_compose(COMPOSE_REPLICAS))["services"]


def haproxy_sections() -> dict[str, list[list[str]]]:
    """``{"backend api": [[word, ...], ...], ...}``: deploy/haproxy.cfg's lines by section."""
    sections: dict[str, list[list[str]]] = {}
    current = ""
    for line in HAPROXY_CFG.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not line[0].isspace():
            current = " ".join(words)
            sections[current] = []
        else:
            sections[current].append(words)
    return sections


def test_the_default_stack_needs_no_replicas_part(services):
    assert not {"lb", "objectstore", "objectstore-bucket"} & set(services), \
        "docker compose up alone must not need the load balancer or the object store"


def test_replicas_overlay_puts_the_load_balancer_in_front(compose, replicas, parser):
    overlay = load_compose(COMPOSE_REPLICAS)["services"]
    assert set(overlay) - set(compose["services"]) == {"lb", "objectstore",
                                                       "objectstore-bucket"}, set(overlay)
    api, lb = replicas["api"], replicas["lb"]
    assert not published_ports(api), "scaled api replicas cannot all publish port 8000"
    assert int(api.get("deploy", {}).get("replicas", 1)) >= 2
    assert ("8000", "8000") in published_ports(lb), published_ports(lb)
    assert lb["image"].startswith("haproxy:"), lb["image"]
    assert (lb["depends_on"]["api"] or {}).get("condition") == "service_healthy"
    mounts = {}
    for volume in lb["volumes"]:
        source, target = volume.split(":")[:2]
        assert (ROOT / source).is_file(), f"lb mounts {source}, which is not in the repo"
        mounts[target] = source
    config_path = argv_of(lb["command"])[argv_of(lb["command"]).index("-f") + 1]
    assert mounts.get(config_path) == "./deploy/haproxy.cfg", mounts
    # every file the configuration names is mounted where it names it
    for section in haproxy_sections().values():
        for words in section:
            if words[0] == "errorfile":
                assert words[2] in mounts, f"{words[2]} is not mounted into lb"
    served = check_clipfit(parser, argv_of(api["command"]), "api.command").port
    servers = [w for w in haproxy_sections()["backend api"] if w[0] == "server-template"]
    assert servers and all(w[3] == f"api:{served}" for w in servers), servers
    for name, service in replicas.items():
        for dep in service.get("depends_on") or {}:
            assert dep in replicas, f"{name} depends on an unknown service {dep!r}"


def test_the_load_balancer_checks_readiness_and_answers_503_with_retry_after():
    backend = haproxy_sections()["backend api"]
    assert ["option", "httpchk", "GET", "/readyz"] in backend, backend
    assert "/readyz" in api_routes()
    assert ["http-check", "expect", "status", "200"] in backend
    checked = [w for w in backend if w[0] == "server-template" and "check" in w]
    assert checked and all("backup" not in w for w in checked), backend
    backups = [w for w in backend if w[0] == "server-template" and "backup" in w]
    assert backups, backend
    # every replica failing /readyz (Redis away): spread over every backup, not the first one
    assert ["option", "allbackups"] in backend, backend
    defaults = haproxy_sections()["defaults"]
    errorfiles = {w[1]: w[2] for w in defaults if w[0] == "errorfile"}
    assert set(errorfiles) == {"502", "503", "504"}, errorfiles
    answer = (ROOT / "deploy" / "haproxy-503.http").read_bytes()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable", lines[0]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Retry-After"]) >= 1 and headers["Content-Type"] == "application/json"
    error = json.loads(body)
    assert {"code", "message", "problems", "detail"} <= set(error), error  # the API's shape


def test_haproxy_accepts_the_configuration(tmp_path):
    import subprocess

    from tests.debian import debian_binary

    binary = debian_binary("haproxy", "haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.read_text().replace(
        "/usr/local/etc/haproxy/haproxy-503.http", str(ROOT / "deploy" / "haproxy-503.http")))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_replicas_share_one_object_store(replicas):
    from registry.settings import Settings

    envs = {name: env_of(replicas[name]) for name in ("migrate", "api", "worker")}
    blob = {env["CLIPFIT_BLOB_URL"] for env in envs.values()}
    assert len(blob) == 1 and next(iter(blob)).startswith("s3://"), blob
    for name, env in envs.items():
        for key in env:
            assert key[len("CLIPFIT_"):].lower() in Settings.model_fields, f"{name}: {key}"
        assert {k: v for k, v in env.items() if k.startswith("CLIPFIT_S3_")} == {
            k: v for k, v in envs["api"].items() if k.startswith("CLIPFIT_S3_")}, name
        deps = replicas[name]["depends_on"]
        assert deps["objectstore"]["condition"] == "service_healthy", name
        assert deps["objectstore-bucket"]["condition"] == "service_completed_successfully"
    endpoint = urlsplit(envs["api"]["CLIPFIT_S3_ENDPOINT_URL"])
    assert endpoint.hostname == "objectstore" and endpoint.port == 9000, endpoint
    store = env_of(replicas["objectstore"])
    assert (store["MINIO_ROOT_USER"], store["MINIO_ROOT_PASSWORD"]) == (
        envs["api"]["CLIPFIT_S3_ACCESS_KEY_ID"], envs["api"]["CLIPFIT_S3_SECRET_ACCESS_KEY"])
    bucket = urlsplit(next(iter(blob))).hostname
    assert f"mb --ignore-existing store/{bucket}" in " ".join(
        argv_of(replicas["objectstore-bucket"]["command"]))
    assert "objects" in named_volumes(replicas["objectstore"])


# --- Dockerfile and .dockerignore -----------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)``, comments left out (dockerfile-parse joins continuations)."""
    return [(item["instruction"], item["value"])
            for item in DockerfileParser(path=str(DOCKERFILE)).structure
            if item["instruction"] != "COMMENT"]


def copies() -> list[tuple[list[str], str, str]]:
    """``(sources, destination, workdir)`` for each COPY/ADD from the build context."""
    found, workdir = [], "/"
    for word, rest in dockerfile_instructions():
        if word == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        if word not in ("COPY", "ADD"):
            continue
        parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        flags = [p for p in parts if p.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [p for p in parts if not p.startswith("--")]
        found.append((paths[:-1], paths[-1], workdir))
    return found


def image_paths() -> dict[str, str]:
    """Where each copied source lands in the image (a directory: where its contents go)."""
    where = {}
    for sources, dest, workdir in copies():
        dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
        into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
        for src in sources:
            name = src.rstrip("/")
            if (ROOT / name).is_dir():
                where[name] = dest_abs
            else:
                where[name] = posixpath.join(dest_abs, posixpath.basename(name)) \
                    if into_dir else dest_abs
    return where


def dockerignore_patterns() -> list[str]:
    """The patterns of .dockerignore, read as docker-py's ``APIClient.build`` reads them."""
    lines = DOCKERIGNORE.read_text().splitlines() if DOCKERIGNORE.exists() else []
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


@functools.cache
def build_context() -> frozenset[str]:
    """The paths (files and directories, relative to the root) sent as the build context:
    docker-py's implementation of the Docker CLI's .dockerignore rules."""
    return frozenset(exclude_paths(str(ROOT), dockerignore_patterns()))


def test_dockerfile_copies_existing_unignored_paths():
    matcher = PatternMatcher(dockerignore_patterns())
    assert matcher.matches(".venv"), ".venv would be sent as build context"
    context = build_context()
    found = copies()
    assert found, "the Dockerfile copies nothing"
    for sources, _, _ in found:
        for src in sources:
            matches = list(ROOT.glob(src.rstrip("/")))
            assert matches, f"COPY {src}: not in the repository"
            for match in matches:
                rel = match.relative_to(ROOT).as_posix()
                assert rel in context, f"COPY {src}: excluded by .dockerignore"
                files = [match] if match.is_file() else [
                    f for f in match.rglob("*") if f.is_file()
                    and f.suffix in {".py", ".json", ".mako", ".ini", ".toml", ".md"}]
                for f in files:
                    frel = f.relative_to(ROOT).as_posix()
                    assert frel in context, f"{frel}: excluded by .dockerignore"


def test_dockerfile_copies_what_the_install_and_migrations_need():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = project["tool"]["setuptools"]["packages"]["find"]
    # The top-level packages the install finds (setuptools expands the include/exclude globs).
    packages = sorted({p.split(".")[0] for p in find_packages(
        str(ROOT), include=find.get("include", ("*",)), exclude=find.get("exclude", ()))})
    assert packages, "the install finds no package"
    where = image_paths()
    needed = ["pyproject.toml", project["project"]["readme"], "alembic.ini", "migrations",
              *packages]
    missing = [n for n in needed if n not in where]
    assert not missing, f"the Dockerfile does not copy {missing}"
    workdir = [rest for word, rest in dockerfile_instructions() if word == "WORKDIR"][-1]
    root = posixpath.dirname(where["registry"])  # registry/migrate.py: ROOT = parents[1]
    assert where["alembic.ini"] == posixpath.join(root, "alembic.ini"), where
    assert where["migrations"] == posixpath.join(root, "migrations"), where
    for pkg in packages:
        assert where[pkg] == posixpath.join(root, pkg), f"{pkg} lands at {where[pkg]}"
    assert posixpath.normpath(workdir) == root, f"WORKDIR {workdir}: `alembic` runs from {root}"
    runs = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert re.search(r"pip install[^&;]*-e \.", runs), "the project is not installed editable"


def test_dockerfile_cmd_user_and_healthcheck(parser):
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert words[0] in ("FROM", "ARG") and any(
        w == "FROM" and rest.startswith("python:3.11") for w, rest in instructions)
    cmds = [rest for word, rest in instructions if word == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    cmd = json.loads(cmds[-1])
    assert "ENTRYPOINT" not in words, "an ENTRYPOINT would change what compose commands run"
    args = check_clipfit(parser, cmd, "Dockerfile CMD")
    assert args.command == "serve" and args.host == "0.0.0.0", cmd
    exposed = [rest for word, rest in instructions if word == "EXPOSE"]
    assert str(args.port) in " ".join(exposed).split(), f"EXPOSE {exposed}, serves {args.port}"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    assert words.index("USER") > max(i for i, (w, r) in enumerate(instructions)
                                     if w == "RUN" and "pip install" in r), \
        "USER comes before the installation"
    checks = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert checks, "the Dockerfile has no HEALTHCHECK"
    probe = json.loads(checks[-1][checks[-1].index("CMD") + 3:].strip())
    check_http_probe(probe, str(args.port), "Dockerfile HEALTHCHECK")
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    for key in ("CLIPFIT_DATA_DIR", "CLIPFIT_WEIGHTS_DIR"):
        assert re.search(rf"\b{key}=/\S+", env), f"the image does not set {key}"
