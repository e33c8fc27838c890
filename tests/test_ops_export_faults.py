"""`made export` killed mid-write never leaves a half-written version: SIGKILL a process that
exports version after version of a 6 MB model, and every version the store lists is whole (its
files match the manifest's checksums) while the killed one is a hidden temporary directory that
is never listed or served, and the next export goes on from the last whole version."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_npz

from made.store.versions import list_versions, open_model
from training.checkpoint import BEST, save_tensors
from training.export import export_run
from training.model import MADE, MADEConfig
from training.train import CONFIG, METRICS, TrainConfig

EXPORTER = """
import sys
from training.export import export_run
run_dir, store = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while True:
    export_run(run_dir, store, "big")
"""


def _random_run(run_dir: Path, data: Path) -> Path:
    """A run as far as export is concerned (config, metrics, best weights): D=784, 1000 hidden
    units, direct connections; about 6 MB of weights."""
    cfg = TrainConfig(dataset=str(data), model=MADEConfig(dims=784, hidden=[1000], direct=True))
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG).write_text(json.dumps(cfg.to_dict()))
    (run_dir / METRICS).write_text(json.dumps({"test_nll": 1.0, "valid_nll": 1.0}))
    torch.manual_seed(0)
    save_tensors(run_dir / BEST, MADE(cfg.model).state_dict(), {"epoch": 1})
    return run_dir


def _kill_inside_a_write(proc: subprocess.Popen[str], model_dir: Path, delay_s: float) -> bool:
    """SIGKILL `proc` `delay_s` after a temporary version directory appears under `model_dir`
    (polled every millisecond; a random sleep lands mostly in the graphs' building, before any
    file is written). True when the directory was seen before the process ended."""
    seen = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if model_dir.is_dir() and any(p.name.endswith(".tmp") for p in model_dir.iterdir()):
            seen = True
            time.sleep(delay_s)
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return seen


@pytest.mark.slow
def test_an_export_killed_at_any_point_leaves_only_whole_versions(tmp_path: Path) -> None:
    run_dir = _random_run(tmp_path / "run", write_npz(tmp_path / "d784.npz", 784, n=60))
    store = tmp_path / "store"
    rng = random.Random(3)
    leftovers: list[str] = []
    versions: list[str] = []
    for attempt in range(20):  # until a kill has landed inside a write (nearly always the first)
        proc = subprocess.Popen(
            [sys.executable, "-c", EXPORTER, str(run_dir), str(store)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        if attempt == 0:  # let one whole version land first, so the kill hits a later one
            while proc.poll() is None and not list_versions(store, "big"):
                time.sleep(0.005)
        assert _kill_inside_a_write(proc, store / "big", rng.uniform(0, 0.01))
        versions = list_versions(store, "big")
        for version in versions:  # each listed version verifies against its checksums
            assert open_model(store, "big", version).dims == 784
        assert versions == [str(v) for v in range(1, len(versions) + 1)]
        leftovers = sorted(p.name for p in (store / "big").iterdir() if p.name.startswith("."))
        if leftovers:
            break
    assert leftovers and all(name.endswith(".tmp") for name in leftovers)
    assert versions, "the kill came before a first whole version"
    served = open_model(store, "big")  # what a server would load: the highest whole version
    assert served.version == list_versions(store, "big")[-1]
    assert not any(v.startswith(".") for v in list_versions(store, "big"))
    after = export_run(run_dir, store, "big")
    assert after.name == str(int(served.version) + 1)
