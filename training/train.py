"""The training loop: minibatches, a mask drawn per minibatch, early stopping, atomic checkpoints
and resume. A run killed at any point continues from its last checkpoint (one epoch interval),
and a resumed run follows the same trajectory as one never interrupted."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from made.core.errors import CheckpointError, ConfigError, DataError, format_value
from made.core.progress import Progress
from made.io.atomic import atomic_write_text
from made.io.data import Dataset, load_intensities
from made.io.tables import TableDataset
from made.io.training_data import load_training_data
from training.checkpoint import (
    BEST,
    CHECKPOINT,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_tensors,
)
from training.model import MADE, MADEConfig
from training.progress import epoch_progress, log_epoch, write_curve
from training.recipe import adapt_to_rows, still_improving
from training.resume import check_resumable
from training.run_files import CONFIG, CURVE, DATA, HISTORY, METRICS
from training.table_heads import EncodedRows
from training.table_model import TableMADE, TableMADEConfig

log = logging.getLogger("made.train")


@dataclass
class TrainConfig:
    dataset: str  # the name or path the data came from
    model: MADEConfig | TableMADEConfig  # bits, or the columns of a table (TableMADEConfig.columns)
    seed: int = 0  # seeds weights, shuffling and the mask drawn per minibatch
    # 0 (max_epochs, batch_size, patience): from the training rows (small_data_recipe), as
    # `made train` leaves them unless given
    max_epochs: int = 200
    batch_size: int = 100
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay) | adagrad | adadelta | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    eps: float | None = None  # the optimizer's epsilon (adam, adamw, adagrad, adadelta); None: torch's
    rho: float = 0.9  # adadelta's decay of its running averages
    # a fresh mask (ordering and/or hidden degrees, as the model is order- and/or connectivity-
    # agnostic) for every update, as the official code's `shuffle_mask -1`; the K stored masks
    # are then K more draws, the ensemble that is validated, tested and exported
    resample_masks: bool = False
    # validate each epoch on the mixture of the first N of the K masks (0: all K), to keep epochs
    # cheap when K is large; the final valid and test NLL (metrics.json) always use all K
    valid_masks: int = 0
    lr_step: int = 0  # multiply the learning rate by lr_gamma every lr_step epochs (0: constant)
    lr_gamma: float = 0.1
    patience: int = 20  # epochs without a better validation NLL before stopping
    eval_batch: int = 1000
    # grayscale .npz whose first train images the binary training rows were drawn from: each epoch
    # trains on a fresh Bernoulli(intensity/255) draw of them; valid and test stay the static sets
    rebinarize: str | None = None
    # [H, W] of image data, kept for export (the manifest's image_shape: PNG grids of samples)
    image_shape: list[int] | None = None
    # a groups file (../shared/data/groups/NAME.json): the bit data set is trained as categories
    groups: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        model = data["model"]
        data["model"] = TableMADEConfig.from_dict(model) if "columns" in model else MADEConfig.from_dict(model)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# Fields that may change when a run is resumed (e.g. to train for longer, or with the data
# files at another path; rebinarize may move but not be switched on or off; image_shape is
# only a label for export).


def build_model(config: MADEConfig | TableMADEConfig) -> MADE | TableMADE:
    return TableMADE(config) if isinstance(config, TableMADEConfig) else MADE(config)


OPTIMIZERS = ("adam", "adamw", "adagrad", "adadelta", "sgd")


def check_optimizer(cfg: TrainConfig) -> None:
    """Refuse optimizer settings torch refuses with a traceback, or takes and trains badly with
    (a NaN rate, a negative step), naming the `made train` option of each."""
    checks = (
        ("--lr", cfg.lr, cfg.lr > 0, "a finite learning rate above 0"),
        ("--weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, "a finite penalty of 0 or more"),
        ("--eps", cfg.eps, cfg.eps is None or cfg.eps > 0, "a finite epsilon above 0"),
        ("--rho", cfg.rho, 0 <= cfg.rho <= 1, "a decay between 0 and 1"),
        ("--lr-gamma", cfg.lr_gamma, cfg.lr_gamma > 0, "a finite factor above 0"),
        ("--lr-step", cfg.lr_step, cfg.lr_step >= 0, "a number of epochs, 0 or more (0: a constant rate)"),
    )
    for flag, value, fine, expected in checks:
        if value is not None and not (fine and math.isfinite(value)):
            raise ConfigError(f"{flag} is {format_value(value)}; give {expected}")


def build_optimizer(cfg: TrainConfig, model: MADE | TableMADE) -> torch.optim.Optimizer:
    """The optimizer of a configuration. adadelta is Zeiler's rule as the official MADE code has
    it (its DNA command: decay 0.95, epsilon 1e-5), times lr (1.0 there); sgd is plain minibatch
    gradient descent at a constant rate (the official code's update rule `None`)."""
    params, lr, wd = model.parameters(), cfg.lr, cfg.weight_decay

    def eps(default: float) -> float:  # torch's own default unless one is given
        return default if cfg.eps is None else cfg.eps

    # adam and adamw fused: one kernel over each tensor instead of a dozen (the same rule; about
    # 3x faster a step on CPU, docs/tables.md "Training cost")
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, eps=eps(1e-8), fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, eps=eps(1e-8), fused=True)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, eps=eps(1e-10))
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=cfg.rho, weight_decay=wd, eps=eps(1e-6))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"unknown optimizer '{cfg.optimizer}', expected one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def nll_per_example(
    model: MADE | TableMADE,
    data: np.ndarray | EncodedRows,
    mask: int | None,
    batch: int = 1000,
    first_masks: int = 0,
) -> np.ndarray:
    """(N,) negative log-likelihood in nats: one mask, or the mixture of all (mask=None; of the
    first `first_masks` masks when that is between 1 and K - 1). A table's rows are encoded once
    (or come encoded), not per chunk and mask."""
    model.eval()
    subset = list(range(first_masks)) if 0 < first_masks < model.n_masks else None
    if isinstance(model, TableMADE) and not isinstance(data, EncodedRows):
        data = model.encode(data)
    out = []
    for start in range(0, len(data), batch):
        if isinstance(data, EncodedRows):
            x: torch.Tensor | EncodedRows = data.slice(start, start + batch)
        else:
            x = torch.from_numpy(data[start : start + batch]).to(model.input_dtype)
        lp = model.mixture_log_prob(x, subset) if mask is None else model.log_prob(x, mask)  # type: ignore[arg-type]
        out.append(-lp.numpy())
    return np.concatenate(out).astype(np.float64)


def init_output_bias(model: MADE, train: np.ndarray) -> None:
    """Start every output at the logit of its training marginal (what a first epoch would
    otherwise spend learning: background pixels need biases near -7, far from an lr of 1e-3)."""
    p = np.clip(train.mean(axis=0, dtype=np.float64), 1e-3, 1 - 1e-3)
    with torch.no_grad():
        model.layers[-1].bias.copy_(torch.from_numpy(np.log(p / (1 - p))).float())


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, data: Dataset | TableDataset | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        if data is None:
            schema = cfg.model.schema if isinstance(cfg.model, TableMADEConfig) else None
            data = load_training_data(cfg.dataset, schema=schema, groups=cfg.groups if schema is not None else None)
        self.data = data
        self.recipe: str | None = None
        self.adapt_to_rows(len(self.data.split("train")))
        if cfg.resample_masks and isinstance(cfg.model, TableMADEConfig):
            raise ConfigError("resampling masks per update is for bit models, not for tables")
        if cfg.valid_masks < 0:
            raise ConfigError(f"valid_masks must be 0 (all masks) or a positive count, got {cfg.valid_masks}")
        check_optimizer(cfg)  # before RUN_DIR holds a config.json of them
        if self.data.dims != cfg.model.dims:
            raise ConfigError(
                f"data set {self.data.source} has {self.data.dims} dimensions, the model expects {cfg.model.dims}"
            )
        self.train_x = torch.from_numpy(self.data.split("train")).to(
            TableMADE.input_dtype if isinstance(cfg.model, TableMADEConfig) else MADE.input_dtype
        )
        self.valid_x = self.data.split("valid")
        self.train_p = (
            torch.from_numpy(load_intensities(cfg.rebinarize, self.data.split("train"))) if cfg.rebinarize else None
        )

    def adapt_to_rows(self, n_rows: int) -> None:
        """Fill batch_size, max_epochs and patience left at 0 (or None) from the training rows
        (training/recipe.py); the run's config.json records the numbers used."""
        self.recipe = adapt_to_rows(self.cfg, n_rows)

    def epoch_rows(self, gen: torch.Generator) -> torch.Tensor:
        """The training rows of one epoch: the static split, or a fresh binarization of its images."""
        if self.train_p is None:
            return self.train_x
        return (torch.rand(self.train_p.shape, generator=gen) < self.train_p).float()

    def prepare_run_dir(self) -> dict[str, Any] | None:
        """Create RUN_DIR or check it holds this same run; return the checkpoint state to resume."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(f"cannot write to run directory {self.run_dir}: {exc.strerror or exc}") from None
        # a run killed mid-write leaves its temporary file behind (the target is intact)
        for stale in self.run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        config_path = self.run_dir / CONFIG
        data = {"sha256": self.data_sha256()}
        if not config_path.exists():
            if (self.run_dir / CHECKPOINT).exists():
                raise CheckpointError(f"{self.run_dir} holds a checkpoint but no {CONFIG}")
            atomic_write_text(self.run_dir / DATA, json.dumps(data, indent=2))
            atomic_write_text(config_path, json.dumps(self.cfg.to_dict(), indent=2))
            return None
        self.check_same_data(data)
        try:
            stored = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
        try:
            # read through TrainConfig: a field added since that run was written (activation,
            # init, ...) takes its default, which is what the run trained with
            stored = TrainConfig.from_dict(stored).to_dict()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{config_path} does not describe a training run: {exc!r}") from None
        mine = self.cfg.to_dict()
        if check_resumable(self.run_dir, stored, mine):
            # e.g. a longer --max-epochs: record what this run now trains under
            atomic_write_text(config_path, json.dumps(mine, indent=2))
        if not (self.run_dir / CHECKPOINT).exists():
            return None
        state = load_tensors(self.run_dir / CHECKPOINT)
        return {"tensors": state[0], "meta": state[1]}

    def data_sha256(self) -> str:
        """The sha256 of the data's splits as the run reads them (their rows, in order): what a
        resumed run checks it trains on, wherever the file now is (--dataset may move)."""
        digest = hashlib.sha256()
        for split in ("train", "valid", "test"):
            try:
                rows = np.ascontiguousarray(self.data.split(split))
            except (DataError, KeyError):  # a data set without that split
                continue
            digest.update(f"{split} {rows.dtype} {rows.shape};".encode())
            digest.update(rows.tobytes())
        return digest.hexdigest()

    def check_same_data(self, data: dict[str, str]) -> None:
        """Refuse to resume (or rerun) a run on data other than it trained on, by its DATA file
        (a run from before that file has none: nothing to check)."""
        path = self.run_dir / DATA
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
        if stored.get("sha256") != data["sha256"]:
            try:
                ran = json.loads((self.run_dir / CONFIG).read_text()).get("groups")
            except (OSError, ValueError, AttributeError):
                ran = None
            grouped = ""
            if ran or self.cfg.groups:
                # the rows are hashed as read through the groups: other groups (or none) read the
                # same bits as other rows
                asked = self.cfg.groups or "none"
                grouped = f", or groups them otherwise (--groups: {ran or 'none'} in the run, {asked} asked)"
            raise CheckpointError(
                f"{self.run_dir} holds a run on other data: --dataset {self.cfg.dataset} holds other rows than the "
                f"run trained on{grouped} (their sha256 differ, data.json); use another --out to start a new run"
            )

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Train (or resume) to the end; a failed write to RUN_DIR (full, unwritable) is one
        CheckpointError, and the last checkpoint stays whole (every write is atomic)."""
        try:
            return self._run(progress)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise CheckpointError(
                f"cannot write to run directory {self.run_dir}: {exc.strerror or exc}{where}"
            ) from None

    def _run(self, progress: bool) -> dict[str, Any]:
        cfg = self.cfg
        resume = self.prepare_run_dir()
        if self.recipe is not None:
            log.info("%s", self.recipe)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
        optimizer = build_optimizer(cfg, model)
        gen = torch.Generator().manual_seed(cfg.seed)
        progress_state: dict[str, Any] = {
            "epoch": 0,
            "best_valid": None,
            "best_epoch": 0,
            "bad_epochs": 0,
            "finished": False,
            "seconds": 0.0,
            "cpu_seconds": 0.0,
        }
        history: list[dict[str, Any]] = []
        if resume is not None:
            tensors, meta = resume["tensors"], resume["meta"]
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            restore_optimizer(optimizer, tensors, meta["optimizer"])
            gen.set_state(tensors["rng.torch"])
            progress_state = meta["progress"]
            history = self._read_history(progress_state["epoch"])
            if progress_state["finished"] and progress_state["epoch"] >= cfg.max_epochs:
                log.info("run in %s is already finished", self.run_dir)
                return self.finish(model, progress_state)
            progress_state["finished"] = False
            log.info("resuming %s after epoch %d", self.run_dir, progress_state["epoch"])
            # metrics.json describes a finished run's best weights: a run trained on (a longer
            # --max-epochs) is unfinished until it ends, and made export refuses it till then
            # (else a kill would leave the old metrics beside newer best weights)
            (self.run_dir / METRICS).unlink(missing_ok=True)
        else:
            # a run killed before its first checkpoint may have logged an epoch: start afresh
            (self.run_dir / HISTORY).unlink(missing_ok=True)
            if isinstance(model, TableMADE):
                model.init_from_data(self.data.split("train"))
            else:
                init_output_bias(model, self.data.split("train"))

        n = len(self.train_x)
        bars = epoch_progress(cfg.max_epochs, math.ceil(n / cfg.batch_size), progress_state["epoch"], enabled=progress)
        with bars.active():
            self._epochs(model, optimizer, gen, progress_state, history, bars)
        if history:
            write_curve(self.run_dir / CURVE, history)
        progress_state["finished"] = True
        self._checkpoint(model, optimizer, gen, progress_state)
        return self.finish(model, progress_state)

    def _epochs(
        self,
        model: MADE | TableMADE,
        optimizer: torch.optim.Optimizer,
        gen: torch.Generator,
        progress_state: dict[str, Any],
        history: list[dict[str, Any]],
        bars: Progress,
    ) -> None:
        """Epochs until max_epochs or early stopping, each ending with an atomic checkpoint."""
        cfg, n = self.cfg, len(self.train_x)
        # a table's rows are encoded for its heads once, not per minibatch (training/table_heads.py)
        encoded = model.encode(self.train_x) if isinstance(model, TableMADE) else None
        valid_rows = model.encode(self.valid_x) if isinstance(model, TableMADE) else self.valid_x
        while progress_state["epoch"] < cfg.max_epochs and progress_state["bad_epochs"] < cfg.patience:
            started, cpu_started = time.perf_counter(), time.process_time()
            # the rate is a function of the epoch alone, so a resumed run gets the same schedule
            if cfg.lr_step > 0:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * cfg.lr_gamma ** (progress_state["epoch"] // cfg.lr_step)
            model.train()
            rows = self.epoch_rows(gen)
            order = torch.randperm(n, generator=gen)
            shuffled = encoded.take(order) if encoded is not None else None
            total, count = 0.0, 0
            for step, start in enumerate(range(0, n, cfg.batch_size), start=1):
                x: torch.Tensor | EncodedRows = (
                    shuffled.slice(start, start + cfg.batch_size)
                    if shuffled is not None
                    else rows[order[start : start + cfg.batch_size]]
                )
                if cfg.resample_masks:
                    assert isinstance(model, MADE) and isinstance(x, torch.Tensor)
                    seed = int(torch.randint(2**62, (1,), generator=gen))
                    loss = -model.log_prob(x, masks=model.draw_masks(seed)).mean()
                else:
                    k = int(torch.randint(model.n_masks, (1,), generator=gen)) if model.n_masks > 1 else 0
                    loss = -model.log_prob(x, k).mean()  # type: ignore[arg-type]
                # a non-finite loss would step the weights to NaN and train on, to NaN metrics and
                # exit 0: stop before the step, with the last checkpoint (an epoch's end) intact
                value = loss.item()
                self._check_finite(
                    value, "the training loss", f"at epoch {progress_state['epoch'] + 1}, step {step}", progress_state
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += value * len(x)
                count += len(x)
                bars.update(1, note=f"train {total / count:.2f}")
            valid = float(nll_per_example(model, valid_rows, None, cfg.eval_batch, cfg.valid_masks).mean())
            epoch = progress_state["epoch"] + 1
            # the epoch's last step can make the weights NaN (a finite loss, a NaN gradient) or
            # huge, which no later loss shows before they would be saved over the last checkpoint
            self._check_finite(valid, "the validation NLL", f"after epoch {epoch}", progress_state)
            best = progress_state["best_valid"]
            if best is None or valid < best:
                progress_state.update(best_valid=valid, best_epoch=epoch, bad_epochs=0)
                save_tensors(self.run_dir / BEST, model.state_dict(), {"config": cfg.to_dict(), "epoch": epoch})
            else:
                progress_state["bad_epochs"] += 1
            progress_state["epoch"] = epoch
            progress_state["seconds"] += time.perf_counter() - started
            # CPU seconds of the process (all its threads): what the wall time of a run with one
            # thread comes down to on a machine it has to itself (a checkpoint from before has none)
            progress_state["cpu_seconds"] = progress_state.get("cpu_seconds", 0.0) + time.process_time() - cpu_started
            row = {
                "epoch": epoch,
                "train_nll": total / count,
                "valid_nll": valid,
                "seconds": round(progress_state["seconds"], 2),
            }
            history.append(row)
            self._append_history(row)
            self._checkpoint(model, optimizer, gen, progress_state)
            log_epoch(
                bars,
                cfg.max_epochs,
                epoch,
                row["train_nll"],
                valid,
                progress_state["best_valid"],
                progress_state["best_epoch"],
                progress_state["seconds"],
            )
            if epoch % 10 == 0:
                write_curve(self.run_dir / CURVE, history)

    def _check_finite(self, value: float, what: str, where: str, progress_state: dict[str, Any]) -> None:
        """Stop a run whose `what` (a loss) is not finite `where` in the epoch after the checkpointed
        one, which stays as it was: one line that says so and what to try."""
        if math.isfinite(value):
            return
        done = progress_state["epoch"]
        kept = f"{self.run_dir} keeps the checkpoint of epoch {done}" if done else "no epoch was checkpointed"
        raise ConfigError(
            f"training diverged: {what} became {format_value(value)} {where}; {kept}; "
            f"try a lower --lr (it is {format_value(self.cfg.lr)})"
        )

    def _checkpoint(
        self,
        model: MADE | TableMADE,
        optimizer: torch.optim.Optimizer,
        gen: torch.Generator,
        progress_state: dict[str, Any],
    ) -> None:
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors["rng.torch"] = gen.get_state()
        save_tensors(
            self.run_dir / CHECKPOINT,
            tensors,
            {"progress": progress_state, "optimizer": opt_meta, "config": self.cfg.to_dict()},
        )

    def _append_history(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / HISTORY, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def _read_history(self, upto_epoch: int) -> list[dict[str, Any]]:
        """History rows up to the checkpointed epoch; rows of epochs lost in a kill are dropped."""
        path = self.run_dir / HISTORY
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if row.get("epoch", 0) <= upto_epoch:
                    rows.append(row)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def finish(self, model: MADE | TableMADE, progress_state: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the best weights on valid and test; write metrics.json."""
        tensors, _ = load_tensors(self.run_dir / BEST)
        model.load_state_dict(tensors)
        metrics: dict[str, Any] = {
            "best_epoch": progress_state["best_epoch"],
            "epochs": progress_state["epoch"],
            "train_seconds": round(progress_state["seconds"], 1),
            "train_cpu_seconds": round(progress_state.get("cpu_seconds", 0.0), 3),
            "torch_threads": torch.get_num_threads(),
            "hardware": _hardware(),
        }
        warning = still_improving(progress_state["best_epoch"], progress_state["epoch"])
        if warning is not None:
            metrics["still_improving"] = True
            metrics["warning"] = warning
            log.warning(warning)
        for split in ("valid", "test"):
            values = self.data.split(split)
            data = model.encode(values) if isinstance(model, TableMADE) else values
            per_mask = [
                mean_and_stderr(nll_per_example(model, data, k, self.cfg.eval_batch)) for k in range(model.n_masks)
            ]
            mix, mix_se = mean_and_stderr(nll_per_example(model, data, None, self.cfg.eval_batch))
            metrics[f"{split}_nll"] = mix
            metrics[f"{split}_nll_stderr"] = mix_se
            metrics[f"{split}_nll_per_mask"] = [m for m, _ in per_mask]
            metrics[f"{split}_n"] = len(data)
        atomic_write_text(self.run_dir / METRICS, json.dumps(metrics, indent=2))
        log.info(
            "finished: valid %.3f test %.3f ± %.3f nats",
            metrics["valid_nll"],
            metrics["test_nll"],
            metrics["test_nll_stderr"],
        )
        return metrics


def _hardware() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} on CPU"
