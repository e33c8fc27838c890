"""The two-command set-up a new user runs first: the Makefile's install and serve recipes and the
package metadata they build from."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """The commands `make -n ARGS` would run, without running them."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MADE_HOST", "MADE_PORT")}
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        check=True,
        timeout=60,
    ).stdout
    return out.splitlines()


def _serve_line(*args: str, env: dict[str, str] | None = None) -> str:
    return next(line for line in _dry_run("serve", *args, env=env) if " serve " in line)


def test_make_serve_listens_where_it_is_told() -> None:
    assert _serve_line().endswith("made serve --host 127.0.0.1 --port 8000")
    assert _serve_line("PORT=8102").endswith("--host 127.0.0.1 --port 8102")
    assert _serve_line("HOST=0.0.0.0", "PORT=9000").endswith("--host 0.0.0.0 --port 9000")
    assert _serve_line(env={"MADE_PORT": "8111", "MADE_HOST": "0.0.0.0"}).endswith("--host 0.0.0.0 --port 8111")


def test_make_install_shows_its_progress(tmp_path: Path) -> None:
    lines = _dry_run("install", f"VENV={tmp_path / 'venv'}")  # a fresh venv: every step would run
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 2 and all("--quiet" not in line for line in installs), installs
    assert any("torch==2.13.0" in line for line in installs)
    steps = [line for line in lines if line.startswith("echo") and "==> [" in line]
    assert len(steps) == 3, lines


def test_the_license_is_an_spdx_string_for_setuptools() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"  # a TOML table is deprecated (a warning at every install)
    assert "setuptools>=77" in pyproject["build-system"]["requires"][0]  # the first to read SPDX strings
