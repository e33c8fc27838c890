"""Training under faults: `made train` SIGKILLed at several points (mid-epoch, in the middle of
writing its checkpoint or its best weights, at startup) resumes each time having lost at most
the epoch in progress, and ends exactly where a run never interrupted ends; a full or read-only
run directory stops it with one line and exit status 2, its last checkpoint intact."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import write_npz
from helpers import MADE_BIN, STEADY_RUN, assert_same_tensors, checkpoint_epoch, made_train_args, retrain_in_one_thread

from training.checkpoint import BEST, CHECKPOINT, load_tensors
from training.train import HISTORY, METRICS, TrainConfig, Trainer

EPOCHS = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _logged_epochs(run_dir: Path) -> list[int]:
    """Epochs in the training log (a line cut short by the kill is skipped)."""
    epochs = []
    with contextlib.suppress(FileNotFoundError):
        for line in (run_dir / HISTORY).read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                epochs.append(int(json.loads(line)["epoch"]))
    return epochs


def _temporaries(run_dir: Path, target: str) -> list[str]:
    """The temporary files of an atomic write of `target` in progress (or cut short)."""
    try:
        return [n for n in os.listdir(run_dir) if n.startswith(f".{target}.") and n.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], deadline: float, then_wait: float = 0.0
) -> None:
    """SIGKILL `proc` as soon as `ready()` (polled in a tight loop), or `then_wait` s later."""
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the kill point was never reached"
    time.sleep(then_wait)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_run_killed_at_many_points_loses_at_most_one_epoch_and_ends_as_if_never_killed(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "chain20.npz", 20, seed=5, n=1500)
    run_dir = tmp_path / "killed"
    options = dict(hidden="256,256", masks=2, order_agnostic=True, seed=1, max_epochs=EPOCHS, **STEADY_RUN)
    args = [str(MADE_BIN), *made_train_args(data, run_dir, **options)]
    rng = random.Random(7)
    # A checkpoint here is ~1 MB: the test sees its temporary file and kills within the write.
    plan = ["checkpoint-write", "best-write", "mid-epoch", "startup"]
    previous = 0
    for point in plan:
        for _attempt in range(5):  # a write may finish before the kill lands: try again
            start_epoch = checkpoint_epoch(run_dir / CHECKPOINT)
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
            deadline = time.monotonic() + 90
            if point == "startup":  # importing torch, loading data, or in the first epoch
                _kill_when(proc, lambda: True, deadline, rng.uniform(0.0, 1.0))
            elif point == "mid-epoch":  # a random way into the epoch after a checkpoint
                _kill_when(
                    proc,
                    lambda: checkpoint_epoch(run_dir / CHECKPOINT) > start_epoch,  # noqa: B023
                    deadline,
                    rng.uniform(0.0, 0.15),
                )
            else:  # as soon as a new temporary file of the write appears
                target = CHECKPOINT if point == "checkpoint-write" else BEST
                stale = set(_temporaries(run_dir, target))  # left by an earlier kill
                _kill_when(
                    proc,
                    lambda: bool(set(_temporaries(run_dir, target)) - stale),  # noqa: B023
                    deadline,
                )
                if not set(_temporaries(run_dir, target)) - stale:
                    continue  # the write had finished: not the point asked for
            break
        else:
            pytest.fail(f"could not kill the run at {point}")
        assert proc.returncode == -signal.SIGKILL
        # whatever the kill cut, the files a resume reads are whole
        if (run_dir / CHECKPOINT).exists():
            load_tensors(run_dir / CHECKPOINT)
        if (run_dir / BEST).exists():
            load_tensors(run_dir / BEST)
        epoch = checkpoint_epoch(run_dir / CHECKPOINT)
        assert epoch >= previous, f"{point}: the checkpoint went back from {previous} to {epoch}"
        finished = max(_logged_epochs(run_dir), default=0)
        assert finished - epoch <= 1, f"{point}: epochs {epoch + 1}..{finished} lost"
        previous = epoch
    assert 0 < previous < EPOCHS

    resumed = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after epoch {previous}" in resumed.stderr
    assert list(run_dir.glob(".*.tmp")) == []

    # The same run, never interrupted, in this process (one thread, as --threads 1).
    reference = tmp_path / "reference"
    retrain_in_one_thread(run_dir, reference)
    for name in (CHECKPOINT, BEST):
        assert_same_tensors(run_dir / name, reference / name)
    assert (run_dir / HISTORY).read_text().count("\n") == EPOCHS
    assert [json.loads(x)["valid_nll"] for x in (run_dir / HISTORY).read_text().splitlines()] == [
        json.loads(x)["valid_nll"] for x in (reference / HISTORY).read_text().splitlines()
    ]
    mine_m, ref_m = (json.loads((d / METRICS).read_text()) for d in (run_dir, reference))
    assert mine_m["test_nll"] == ref_m["test_nll"] and mine_m["best_epoch"] == ref_m["best_epoch"]


# --- a full or unwritable run directory ---------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("faults") / "chain30.npz", 30, seed=2, n=600)


def _started_run(data: Path, run_dir: Path) -> bytes:
    """Two epochs trained in this process; returns the checkpoint's bytes."""
    cfg = TrainConfig.from_dict(
        {
            "dataset": str(data),
            "seed": 0,
            "max_epochs": 2,
            "batch_size": 50,
            "lr": 0.005,
            "patience": 100,
            "model": {"dims": 30, "hidden": [200]},
        }
    )
    Trainer(cfg, run_dir).run(progress=False)
    return (run_dir / CHECKPOINT).read_bytes()


def _resume(data: Path, run_dir: Path, prefix: str = "") -> subprocess.CompletedProcess[str]:
    """`made train` resuming the run of _started_run for two more epochs, after `prefix`
    (shell commands, e.g. a ulimit)."""
    args = made_train_args(data, run_dir, hidden=200, seed=0, max_epochs=4, **STEADY_RUN)
    script = f'{prefix}\nexec "{MADE_BIN}" "$@"'
    return subprocess.run(["bash", "-c", script, "bash", *args], capture_output=True, text=True, env=ENV, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1], result.stderr
    assert errors[0].startswith("made train: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _assert_last_checkpoint_intact(run_dir: Path, before: bytes) -> None:
    assert (run_dir / CHECKPOINT).read_bytes() == before
    assert checkpoint_epoch(run_dir / CHECKPOINT) == 2
    load_tensors(run_dir / BEST)
    assert list(run_dir.glob(".*.tmp")) == []


def test_a_file_size_limit_stops_training_with_one_line_and_the_checkpoint_intact(data: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (ulimit -f) makes the ~160 kB checkpoint write fail with EFBIG, as a full
    disk would: one line naming the file and the reason, exit 2, the epoch-2 checkpoint kept;
    without the limit, the same command carries on from it."""
    run_dir = tmp_path / "run"
    before = _started_run(data, run_dir)
    result = _resume(data, run_dir, 'ulimit -f 100; trap "" XFSZ')
    _assert_one_line_error(result, str(run_dir / CHECKPOINT), "File too large")
    _assert_last_checkpoint_intact(run_dir, before)
    result = _resume(data, run_dir)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run_dir} after epoch 2" in result.stderr
    assert checkpoint_epoch(run_dir / CHECKPOINT) == 4


@contextlib.contextmanager
def _mounted(*args: str) -> Iterator[None]:
    """`mount ARGS...` for the block (root only: skipped where mounting is not permitted)."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or 'not permitted'})")
    try:
        yield
    finally:
        subprocess.run(["umount", args[-1]], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_stops_training_with_one_line_and_the_checkpoint_intact(data: Path, tmp_path: Path) -> None:
    """A 400 kB tmpfs holds one checkpoint (160 kB) and the best weights (50 kB) but not the
    temporary copy that replaces them: ENOSPC mid-run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with _mounted("-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)):
        run_dir = disk / "run"
        before = _started_run(data, run_dir)
        (disk / "filler").write_bytes(
            b"\0" * (400 * 1024 - sum(p.stat().st_size for p in run_dir.iterdir()) - 100 * 1024)
        )
        result = _resume(data, run_dir)
        _assert_one_line_error(result, str(run_dir), "No space left on device")
        _assert_last_checkpoint_intact(run_dir, before)


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_a_read_only_run_directory_is_one_line_and_the_checkpoint_intact(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    before = _started_run(data, run_dir)
    with _mounted("--bind", "-o", "ro", str(run_dir), str(run_dir)):
        try:
            (run_dir / ".probe").write_text("")
        except OSError:
            pass
        else:  # an old mount(8) binds read-write whatever -o says
            (run_dir / ".probe").unlink()
            pytest.skip("this mount(8) does not make read-only bind mounts")
        result = _resume(data, run_dir)
        _assert_one_line_error(result, f"cannot write to run directory {run_dir}", "Read-only file system")
    _assert_last_checkpoint_intact(run_dir, before)
