"""Train and evaluate MADE on the real data sets from scratch; write docs/results.md.

    .venv/bin/python bench/results.py [--only NAME,NAME] [--jobs 2] [--fresh]

Each experiment is a `made train` run in runs/results/NAME (a finished run is reused unless
--fresh; an unfinished one resumes). The table puts the paper's numbers beside ours, with
training time and hardware. Needs ../shared/data (or MADE_DATA_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import RUNS, data_dir, fresh_run, made_train, train_args  # noqa: E402

DATA = data_dir()

# The settings of the rows added for the four sets with our own splits and the direct variants.
K1 = train_args("500", 1, max_epochs=300, patience=30)
K1_DIRECT = train_args("500", 1, "--direct", max_epochs=300, patience=30)
K32_DIRECT = train_args(
    "500", 32, "--order-agnostic", "--connectivity-agnostic", "--direct", max_epochs=600, patience=30
)
# the binarized MNIST runs' schedule: the rate x0.3 every 40 epochs, at most 150
MNIST_SCHEDULE = shlex.split("--lr-step 40 --lr-gamma 0.3 --max-epochs 150 --patience 20")
OURS = (("connect4", 11.90), ("ocr_letters", 28.34), ("rcv1", 47.10), ("web", 28.53))
# The official code's ADULT command (github.com/mgermain/MADE README: `trainMADE.py adult 0.01 0
# -1 0 ? 300 100 30 False 0 None 0 [500] 1234 False Output False tanh Orthogonal 0`): one mask
# with a random ordering (its trainer shuffles once before training), 500 tanh units,
# orthogonal weights and zero biases, direct input-to-output connections, plain SGD at 0.01
# (update rule `None`, decrease constant 0), minibatches of 100, look-ahead 30, no epoch limit
# (5000 here) and no weight decay. The README has no MUSHROOMS command: the same one is used.
OFFICIAL_ADULT = shlex.split(
    "--hidden 500 --masks 1 --random-ordering --direct --activation tanh --init orthogonal "
    "--optimizer sgd --lr 0.01 --batch-size 100 --max-epochs 5000 --patience 30"
)
# Its DNA command (`trainMADE.py dna 1e-5 0.95 -1 -1 Full 300 100 30 False 0 adadelta 0 [500]
# 1234 False Output False hinge Orthogonal 0`): 500 ReLU units, orthogonal weights, direct
# connections, AdaDelta (decay 0.95, epsilon 1e-5), minibatches of 100, look-ahead 30, a new
# ordering and connectivity for every update, validated each epoch on 300 masks and tested on
# 1000. Here: a new mask per update too; K = 300 stored masks (validated each epoch on the first
# 32 of them, to keep epochs short; the final valid and test NLL use all 300).
OFFICIAL_DNA = shlex.split(
    "--hidden 500 --masks 300 --order-agnostic --connectivity-agnostic --resample-masks --valid-masks 32 "
    "--direct --init orthogonal --optimizer adadelta --lr 1 --rho 0.95 --eps 1e-5 --batch-size 100 "
    "--max-epochs 5000 --patience 30"
)

# name -> (data set, train arguments, paper's number, paper's setting, target)
EXPERIMENTS: dict[str, tuple[str, list[str], float, str, float | None]] = {
    "binarized_mnist-1x500-k1": (
        "binarized_mnist",
        [*shlex.split("--hidden 500 --masks 1 --direct --optimizer adamw --weight-decay 0.1"), *MNIST_SCHEDULE],
        88.40,
        "1 hidden layer, 1 mask",
        88.9,
    ),
    "binarized_mnist-2x500-k8": (
        "binarized_mnist",
        [*shlex.split("--hidden 500,500 --masks 8 --connectivity-agnostic --direct"), *MNIST_SCHEDULE],
        86.64,
        "2 hidden layers, 32 masks",
        88.0,
    ),
    "binarized_mnist-2x1000-k8-rebin": (
        "binarized_mnist",
        shlex.split(
            "--hidden 1000,1000 --masks 8 --connectivity-agnostic --direct --rebinarize mnist.npz "
            "--lr-step 60 --lr-gamma 0.3 --max-epochs 240 --patience 40"
        ),
        86.64,
        "2 hidden layers, 32 masks",
        88.0,
    ),
    "mushrooms-1x500-k1": (
        "mushrooms",
        K1,
        9.68,
        "MADE",
        9.9,
    ),
    "adult-1x500-k1": (
        "adult",
        K1,
        13.12,
        "MADE",
        13.3,
    ),
    "dna-1x500-k32": (
        "dna",
        train_args("500", 32, "--order-agnostic", "--connectivity-agnostic", max_epochs=2000, patience=50),
        79.66,
        "mask sampling",
        82.0,
    ),
    "dna-1x500-k128-direct": (
        "dna",
        train_args("500", 128, "--order-agnostic", "--connectivity-agnostic", "--direct", max_epochs=2000, patience=50),
        79.66,
        "mask sampling",
        82.0,
    ),
    # the four sets whose splits are ours (../shared/data/README.md): the paper's number is a
    # reference; target = paper + 0.5 nats
    **{f"{name}-1x500-k1": (name, K1, paper, "MADE", paper + 0.5) for name, paper in OURS},
    **{f"{name}-1x500-k32-direct": (name, K32_DIRECT, paper, "mask sampling", paper + 0.5) for name, paper in OURS},
    # direct input-to-output connections, as the official code's commands use (adult, dna)
    **{
        f"{name}-1x500-k1-direct": (name, K1_DIRECT, paper, "MADE", target)
        for name, paper, target in (
            ("adult", 13.12, 13.3),
            ("mushrooms", 9.68, 9.9),
            *((name, paper, paper + 0.5) for name, paper in OURS),
        )
    },
    # mask sampling with direct connections on the paper's own splits, and more weight decay
    # where the runs above stop improving within 30 epochs (rcv1: 7000 training rows)
    **{
        f"{name}-1x500-k32-direct": (name, K32_DIRECT, paper, "mask sampling", target)
        for name, paper, target in (("adult", 13.13, 13.3), ("mushrooms", 9.69, 9.9))
    },
    "rcv1-1x500-k32-direct-wd1e-3": (
        "rcv1",
        [("1e-3" if a == "1e-4" else a) for a in K32_DIRECT],
        47.10,
        "mask sampling",
        47.60,
    ),
    # the official code's own settings (OFFICIAL_ADULT, OFFICIAL_DNA above); target: the paper's
    # number itself, the gap this closes
    "adult-1x500-k1-official": ("adult", OFFICIAL_ADULT, 13.12, "MADE", 13.12),
    "mushrooms-1x500-k1-official": ("mushrooms", OFFICIAL_ADULT, 9.68, "MADE", 9.68),
    "dna-1x500-k300-official": ("dna", OFFICIAL_DNA, 79.66, "mask sampling", 79.66),
    # the same settings with Adam instead of plain SGD: which of the two changes does the work
    **{
        f"{name}-1x500-k1-tanh-orth-adam": (
            name,
            [{"sgd": "adam", "0.01": "0.001", "5000": "1000"}.get(a, a) for a in OFFICIAL_ADULT],
            paper,
            "MADE",
            paper,
        )
        for name, paper in (("adult", 13.12), ("mushrooms", 9.68))
    },
    # the official protocol in full: validated each epoch on 300 masks, tested on 1000
    "dna-1x500-k1000-official": (
        "dna",
        [{"300": "1000", "32": "300"}.get(a, a) for a in OFFICIAL_DNA],
        79.66,
        "mask sampling",
        79.66,
    ),
    "nips-1x500-k1": (
        "nips",
        K1,
        280.25,
        "MADE",
        None,
    ),
}


NOTES = """Notes on the gaps:
- binarized_mnist, fixed training set (the paper's protocol): the 500-unit networks overfit the
  one binarization of the 50,000 training images (2x500, K=8: 88.5 nats on its last epoch's
  training minibatches, 93.3 per mask on validation: the `train_nll` of its run's log.jsonl and
  the mean of `valid_nll_per_mask` in its metrics.json), and stop short of the paper. The official
  MADE code trains its MNIST model with two hidden layers of 8000 units (`[8000,8000]` in the
  README command of github.com/mgermain/MADE), out of reach on 2 CPU cores; a 500-unit, one-mask
  MADE is reported at about 94.5 nats by github.com/karpathy/pytorch-made. Direct input-to-output
  connections and output biases started at the data's marginals bring ours to about 90.5.
- binarized_mnist-2x1000-k8-rebin (the shipped default model): each epoch trains on a fresh
  binarization (Bernoulli(intensity/255)) of the same 50,000 training images, read from
  mnist.npz (`--rebinarize`, which checks that these are the images behind the training split);
  validation and test are the fixed sets of binarized_mnist.npz, whose images are never trained
  on. That is data augmentation the paper did not use, so this row is not the paper's protocol:
  it trades the overfitting above for capacity (2x1000 units), within the 10 MB file budget
  thanks to float16 weight storage.
- dna: 32 masks without direct connections stop at 85.35 (overfitting, +3.35 over the target);
  with direct input-to-output connections (as the official code's DNA command uses) and 128 masks
  the mixture reaches 80.63, within the target. The official command (`*-official` rows; its
  settings are OFFICIAL_DNA in bench/results.py: orthogonal initialisation, AdaDelta, a new
  ordering and connectivity for every update, 500 ReLU units, direct connections) gives
  80.04 with K = 300 masks validated per epoch on 32 of them (0.4 s an epoch, 2 minutes in
  all), 0.59 nats better than the 128-mask Adam run but 0.38 above the paper's 79.66: not met.
  The official protocol in full (validated on 300 masks each epoch, tested on a mixture of 1000)
  reaches 79.59 ± 0.34 (valid 79.56) after 372 epochs: the paper's 79.66 is met. A K = 1000
  model is for this measurement: the engine would hold 1000 masked copies of the weights
  (~0.85 MB each here), so a served DNA model would take fewer masks (80.04 at K = 300 above).
- connect4, ocr_letters, rcv1, web: the splits are ours (../shared/data/README.md), so the
  paper's numbers are a reference; the target is the paper's number + 0.5. Direct input-to-output
  connections matter most on connect4 (12.55 -> 11.75). rcv1 has 7,000 training rows here (the
  paper's train set was larger): every variant stops improving on validation within ~30 epochs
  (K=1) or overfits later (K=32), and more weight decay (1e-3) did worse on validation.
  ocr_letters with K=32 order- and connectivity-agnostic masks (direct) ends far behind K=1
  (valid 32.58 against 28.24 after 575 epochs): 500 hidden units shared across 32 orderings of
  128 letters' pixels underfit each of them (per-mask test NLL 36.09), so K=1 stays chosen.
- adult, mushrooms: direct connections move adult 13.27 -> 13.24 and mushrooms 9.89 -> 9.88
  (Adam, ReLU). The official code's ADULT command (`*-official` rows; OFFICIAL_ADULT in
  bench/results.py: one mask with a random ordering, 500 tanh units, orthogonal weights and zero
  biases, direct connections, plain SGD at 0.01 in minibatches of 100, look-ahead 30, no weight
  decay) closes both gaps: adult 13.11 (paper 13.12) after 1445 epochs, mushrooms 9.63 (paper
  9.68; the README has no MUSHROOMS command, so the ADULT one was used) after 2803 epochs, both
  met and both chosen on validation. Output biases start at the data's marginals here (zero in
  the official code). With Adam (lr 0.001) instead of SGD (`*-tanh-orth-adam` rows), the same
  networks stop after 67 (adult) and 254 (mushrooms) epochs at adult 13.18 and mushrooms 9.67:
  tanh units, orthogonal weights and a random ordering (not separated here) give most of the
  mushrooms gain (9.88 -> 9.67) and almost half of adult's (13.24 -> 13.18); the long, slow SGD
  descent gives the rest (13.11, 9.63), and the best validation NLL. These models export and
  serve like the others (the manifest's `activation` is "tanh"; the graph and the engine's
  sampler apply it).
- Train times were measured while other trainings and test runs shared the same 2 cores (the
  `*-official` and `*-tanh-orth-adam` rows: one torch thread each, with up to three other
  trainings running and some paused for minutes by benchmarks, which the times include).
"""


def run_one(name: str, threads: int, fresh: bool) -> dict:
    dataset, extra, *_ = EXPERIMENTS[name]
    out = RUNS / name
    fresh_run(out, fresh)
    # a file named after --rebinarize is one of the data directory's
    extra = [str(DATA / a) if i and extra[i - 1] == "--rebinarize" else a for i, a in enumerate(extra)]
    started = time.time()
    made_train(["--dataset", str(DATA / f"{dataset}.npz"), *extra], out, threads, out / "train.log")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_seconds"] = time.time() - started
    return metrics


def describe(run: Path) -> str:
    """The settings a run really used, from its config.json (not from this file's table)."""
    cfg = json.loads((run / "config.json").read_text())
    m = cfg["model"]
    parts = [f"hidden {','.join(map(str, m['hidden']))}", f"K={m['n_masks']}"]
    parts += [flag for flag in ("order_agnostic", "connectivity_agnostic", "random_ordering", "direct") if m.get(flag)]
    if m.get("activation", "relu") != "relu":
        parts.append(f"{m['activation']} units")
    if m.get("init", "default") != "default":
        parts.append(f"{m['init']} init")
    if cfg.get("resample_masks"):
        parts.append("a new mask per update")
    if cfg.get("valid_masks"):
        parts.append(f"validated per epoch on {cfg['valid_masks']} of the K masks")
    optimizer = f"{cfg['optimizer']} lr {cfg['lr']:g}"
    if cfg["optimizer"] == "adadelta":
        optimizer += f" rho {cfg.get('rho', 0.9):g}"
    if cfg.get("eps") is not None:
        optimizer += f" eps {cfg['eps']:g}"
    parts.append(optimizer)
    if cfg.get("batch_size", 100) != 100:
        parts.append(f"batch {cfg['batch_size']}")
    if cfg.get("weight_decay"):
        parts.append(f"wd {cfg['weight_decay']:g}")
    if cfg.get("rebinarize"):
        parts.append(f"trained on a fresh binarization of {Path(cfg['rebinarize']).name} each epoch")
    if cfg.get("lr_step"):
        parts.append(f"lr x{cfg['lr_gamma']:g} every {cfg['lr_step']} epochs")
    parts.append(f"max {cfg['max_epochs']} epochs, patience {cfg['patience']}")
    return ", ".join(parts).replace("_", "-")


def chosen(results: dict[str, dict]) -> list[str]:
    """Per data set, the finished run with the lowest validation NLL: settings picked on the
    validation split only, its test NLL reported whatever it is."""
    best: dict[str, str] = {}
    for name, (dataset, *_rest) in EXPERIMENTS.items():
        m = results.get(name)
        if m is not None and (dataset not in best or m["valid_nll"] < results[best[dataset]]["valid_nll"]):
            best[dataset] = name
    lines = [
        "## Chosen on the validation split",
        "",
        "Per data set, of the runs above, the one with the lowest validation NLL:",
        "",
        "| data set | run | valid NLL | test NLL | paper | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, name in best.items():
        m, (_d, _extra, paper, _setting, target) = results[name], EXPERIMENTS[name]
        met = "" if target is None else ("yes" if m["test_nll"] <= target else f"no (+{m['test_nll'] - target:.2f})")
        lines.append(
            f"| {dataset} | {name} | {m['valid_nll']:.2f} | {m['test_nll']:.2f} ± {m['test_nll_stderr']:.2f} "
            f"| {paper} | {target or ''} | {met} |"
        )
    return [*lines, ""]


HARDWARE = "hardware of the earlier runs"


def previous_rows(doc: Path) -> dict[str, str]:
    """The rows of an earlier docs/results.md, by experiment: kept for runs this machine does not
    have (runs/ is not in git), with an empty valid NLL cell where that table had none."""
    rows: dict[str, str] = {}
    if not doc.exists():
        return rows
    for line in doc.read_text().splitlines():
        if line.startswith("Hardware: "):
            rows[HARDWARE] = line.removeprefix("Hardware: ")
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) >= 10 and cells[0][2:] in EXPERIMENTS:
            if len(cells) == 10:  # written before the valid NLL column
                cells.insert(2, "")
            rows[cells[0][2:]] = " | ".join(cells)
    return rows


def render(results: dict[str, dict], previous: dict[str, str] | None = None) -> str:
    lines = [
        "# Results: test NLL on the real data sets",
        "",
        "Generated by `.venv/bin/python bench/results.py` (trains from scratch into `runs/results/`).",
        "Test NLL in nats per example, lower is better; ± is one standard error over test examples.",
        "K > 1 rows are scored as the mixture of all K masks, log((1/K) Σ_k p_k(x)).",
        "",
        "| experiment | settings | valid NLL | test NLL (ours) | per-mask mean | paper | paper's setting "
        "| target | met | epochs (best) | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    hardware = set()
    for name, (_dataset, extra, paper, setting, target) in EXPERIMENTS.items():
        m = results.get(name)
        if m is None and previous and name in previous:
            lines.append(previous[name])  # an earlier run's row, as that run's table had it
            if HARDWARE in previous:
                hardware.update(previous[HARDWARE].split("; "))
            continue
        if m is None:
            lines.append(f"| {name} | `{' '.join(extra)}` | | not run | | {paper} | {setting} | {target or ''} | | | |")
            continue
        hardware.add(m["hardware"])
        per_mask = sum(m["test_nll_per_mask"]) / len(m["test_nll_per_mask"])
        met = "" if target is None else ("yes" if m["test_nll"] <= target else f"no (+{m['test_nll'] - target:.2f})")
        lines.append(
            f"| {name} | {describe(RUNS / name)} | {m['valid_nll']:.2f} "
            f"| {m['test_nll']:.2f} ± {m['test_nll_stderr']:.2f} | {per_mask:.2f} | {paper} | {setting} "
            f"| {target or ''} | {met} | {m['epochs']} ({m['best_epoch']}) | {m['train_seconds'] / 60:.1f} min |"
        )
    lines += ["", "Hardware: " + "; ".join(sorted(hardware)) if hardware else "", "", *chosen(results), NOTES]
    return "\n".join(lines) + denoise_section()


DENOISE = ROOT / "docs" / "denoise.md"  # written by bench/denoise.py
DENOISE_HEAD = "## Denoising (from docs/denoise.md, `bench/denoise.py --write`)"


def denoise_section() -> str:
    """docs/denoise.md as the results document's last section (none where it is missing)."""
    if not DENOISE.exists():
        return ""
    return "\n".join(["", "", DENOISE_HEAD, "", *DENOISE.read_text().splitlines()[1:]])


def refresh_denoise(out: Path) -> None:
    """Rewrite only the results document's denoising section from docs/denoise.md (after
    bench/denoise.py --write), training nothing."""
    text = out.read_text()
    head = text.find("\n\n" + DENOISE_HEAD)
    out.write_text((text if head < 0 else text[:head]) + denoise_section())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated experiment names")
    parser.add_argument("--jobs", type=int, default=2, help="experiments trained at once")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per experiment (0: cores / jobs)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs first")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument(
        "--denoise-only",
        action="store_true",
        help="only rewrite the denoising section from docs/denoise.md (after bench/denoise.py --write)",
    )
    args = parser.parse_args()
    if args.denoise_only:
        refresh_denoise(Path(args.out))
        return 0
    if not DATA.is_dir():
        print(f"results: data directory {DATA} not found (set MADE_DATA_DIR)", file=sys.stderr)
        return 2
    names = [n for n in args.only.split(",") if n] or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"results: unknown experiment {unknown[0]}; known: {', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {n: pool.submit(run_one, n, threads, args.fresh) for n in names}
        for n, fut in futures.items():
            fut.result()
            print(f"finished {n}", flush=True)
    # the table covers every finished run, including those of earlier invocations
    results = {
        n: json.loads((RUNS / n / "metrics.json").read_text())
        for n in EXPERIMENTS
        if (RUNS / n / "metrics.json").exists()
    }
    previous = previous_rows(Path(args.out))
    Path(args.out).write_text(render(results, previous))
    print(render(results, previous))
    return 0


if __name__ == "__main__":
    sys.exit(main())
