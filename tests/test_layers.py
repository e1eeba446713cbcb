"""The house rules, read from the source: which package may import which, no cycles, and
no environment reads below the front door."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clipfit_core", "registry", "service", "api", "worker", "clipfit")
# what each package may import from the project (besides itself)
ALLOWED = {
    "clipfit_core": set(),
    "registry": set(),
    "service": {"clipfit_core", "registry"},
    "api": {"clipfit_core", "registry", "service"},
    "worker": {"clipfit_core", "registry", "service"},
    "clipfit": {"clipfit_core", "registry", "service", "api", "worker"},
}
FORBIDDEN_THIRD_PARTY = {
    "clipfit_core": {"fastapi", "starlette", "sqlalchemy", "celery", "kombu", "pydantic",
                     "pydantic_settings", "alembic", "redis"},
    "registry": {"fastapi", "starlette", "celery", "kombu", "torch", "open_clip"},
    "service": {"fastapi", "starlette", "sse_starlette", "uvicorn", "multipart"},
}


def imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (function-local imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def package_imports(package: str) -> set[str]:
    return set().union(*(imports(p) for p in (ROOT / package).rglob("*.py")))


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_down(package):
    project = package_imports(package) & set(PACKAGES) - {package}
    assert project <= ALLOWED[package], \
        f"{package} imports {sorted(project - ALLOWED[package])}"
    bad = package_imports(package) & FORBIDDEN_THIRD_PARTY.get(package, set())
    assert not bad, f"{package} imports {sorted(bad)}"


def test_no_cycles_between_packages():
    graph = {p: package_imports(p) & set(PACKAGES) - {p} for p in PACKAGES}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n)))
                   for n in graph[start])

    assert not [p for p in PACKAGES if reaches(p, p)]


def test_routes_only_parse_call_and_answer():
    """Route handlers reach the database, the queue and the rules through the use cases
    (``service``), never ``registry`` directly, and none is longer than 40 lines."""
    offenders = []
    for path in (ROOT / "api" / "routes").glob("*.py"):
        tree = ast.parse(path.read_text())
        if "registry" in imports(path):
            offenders.append(f"{path.name} imports registry")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.decorator_list:
                length = node.end_lineno - node.lineno + 1
                if length > 40:
                    offenders.append(f"{path.name}:{node.name} has {length} lines")
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["clipfit_core", "api", "worker", "registry", "service"])
def test_no_environment_reads_below_the_front_door(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_the_celery_control_app_does_not_load_the_training_stack(tmp_path):
    """The worker's healthcheck imports worker.main every minute inside a training container."""
    import os
    import subprocess
    import sys

    code = "import sys, worker.main; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env=os.environ | {"CLIPFIT_DATA_DIR": str(tmp_path)})
    assert out.stdout.split() == ["False", "False"]
