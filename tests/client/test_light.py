"""The client starts light: importing it and running ``clipfit remote`` loads none of the
server's stack, and the library package loads its torch modules only when a name is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_STACK = ("torch", "open_clip", "sqlalchemy", "celery", "fastapi")


def loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after running ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps([m for m in {list(modules)!r} if m in sys.modules]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFIT_")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


RUN_CLI = """
import contextlib, io
from clipfit.cli import main
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit:
            pass
    assert "usage: clipfit" in out.getvalue() or "clipfit 0" in out.getvalue(), out.getvalue()
"""


def test_the_client_and_clipfit_remote_load_no_server_stack():
    code = "import clipfit.client, clipfit.remote\n" + RUN_CLI.format(argvs=[
        ["remote", "--help"], ["remote", "jobs", "create", "--help"],
        ["remote", "webhooks", "create", "--help"]])
    # nor pydantic or numpy: remote reads no service settings, the spec needs no arrays
    assert loaded_after(code, (*SERVER_STACK, "pydantic", "numpy", "PIL")) == []


def test_listing_the_commands_loads_no_server_stack():
    code = RUN_CLI.format(argvs=[["--help"], ["--version"], ["train", "--help"]])
    assert loaded_after(code, SERVER_STACK) == []


def test_the_library_loads_a_submodule_on_first_use():
    assert loaded_after("import clipfit_core, clipfit_core.config", ("torch",)) == []
    assert loaded_after("from clipfit_core import Delta", ("torch",)) == ["torch"]
    import clipfit_core

    for name in clipfit_core.__all__:
        assert getattr(clipfit_core, name) is not None
    assert set(clipfit_core.__all__) <= set(dir(clipfit_core))
    with pytest.raises(AttributeError, match="no_such_name"):
        clipfit_core.no_such_name  # noqa: B018


def test_one_version_everywhere(capsys):
    import clipfit
    import clipfit.client
    import clipfit_core
    from clipfit.cli import main
    from clipfit_core.version import __version__

    assert __version__ == "0.2.0"
    assert clipfit.__version__ == clipfit_core.__version__ == clipfit.client.__version__ \
        == __version__
    assert clipfit.client.USER_AGENT == f"clipfit-client/{__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "clipfit_core.version.__version__"}
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"clipfit {__version__}"


def test_the_client_dependencies_are_the_base_and_the_server_is_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in project["dependencies"]}
    assert names == {"httpx", "tqdm"}
    extras = project["optional-dependencies"]
    assert "torch==2.14.1" in extras["server"] and "torchvision==0.29.1" in extras["server"]
    assert "clipfit[server]" in extras["dev"]
