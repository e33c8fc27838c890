"""The two-command set-up a new user runs first: the Makefile's install and serve recipes and the
package metadata they build from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def test_make_serve_on_a_fresh_clone_installs_the_serving_set_only(tmp_path: Path) -> None:
    lines = _dry_run("serve", f"VENV={tmp_path / 'venv'}")  # a fresh venv: every step would run
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/python -m pip install --progress-bar on -e '.[cpu]'"], installs
    # a venv whose serving set is in (`make serve` or `make install` left the stamp) serves as it is
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed-serve").touch()
    assert not [line for line in _dry_run("serve", f"VENV={tmp_path / 'venv'}") if "pip install" in line]
    assert any(".installed-serve" in line for line in _dry_run("install", f"VENV={tmp_path / 'fresh'}"))


# What the serving set lacks: the train extra (torch, onnx, matplotlib, tqdm, pyarrow), the
# training code and the test tools. Serving must never import them (it reads weights.safetensors
# with safetensors, a base dependency, and opens the stored graphs).
_WITHOUT_TRAINING = """
import sys
for name in ("torch", "training", "onnx", "matplotlib", "tqdm", "pyarrow", "pytest", "scipy"):
    sys.modules[name] = None  # import name -> ImportError
import anyio
from service.settings import Settings
from service.testing import in_process

async def main():
    async with in_process(Settings(store=sys.argv[1])) as made:
        await made.wait_ready(timeout=120)
        for body in ({"x": [[0, 1] * 392]}, {"model": "diamonds", "records": [{"carat": 0.3}]}):
            r = await made.http.post("/logprob", json=body)
            assert r.status_code == 200, r.text
        r = await made.http.post("/sample", json={"n": 2, "seed": 0}, headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.content.startswith(b"\\x89PNG"), r.text
        r = await made.http.post("/impute", json={"model": "health-insurance", "records": [{}], "n_samples": 1})
        assert r.status_code == 200, r.text
anyio.run(main)
print("served")
"""


def test_the_shipped_store_serves_without_the_training_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINING, str(ROOT / "model_store")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("served"), out.stderr[-3000:]
