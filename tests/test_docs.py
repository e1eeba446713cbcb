"""The documentation: the site builds with ``mkdocs build --strict`` (every page in the nav,
every link and anchor resolves), README stays a front page with the two commands, the
generated configuration table names every setting, and no page speaks in issue numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from registry.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_strictly(site):
    for page in ("index.html", "getting-started/index.html", "api/errors/index.html",
                 "configuration/index.html", "changelog/index.html"):
        assert (site / page).is_file(), page


def test_readme_is_a_front_page_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in ("./scripts/demo.sh", "./scripts/test.sh"):
        assert f"```bash\n{command}\n```" in readme, command
    assert "\n## Changelog\n" in readme and "CHANGELOG.md" in readme


def test_the_configuration_page_names_every_setting(site):
    page = (site / "configuration" / "index.html").read_text()
    prefix = Settings.model_config["env_prefix"]
    missing = [f"{prefix}{name}".upper() for name in Settings.model_fields
               if f"{prefix}{name}".upper() not in page]
    assert not missing, f"not in the generated configuration table: {missing}"
    assert "settings-table" not in page  # the marker was replaced


def test_changelog_is_keyed_by_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.MULTILINE)
    assert versions[:2] == ["0.2.0", "0.1.0"], versions


@pytest.mark.parametrize("path", ["README.md", "CHANGELOG.md",
                                  *sorted(str(p.relative_to(ROOT))
                                          for p in (ROOT / "docs").rglob("*.md"))])
def test_no_issue_numbers(path):
    found = ISSUE_NUMBER.findall((ROOT / path).read_text())
    assert not found, f"{path}: {found}"
