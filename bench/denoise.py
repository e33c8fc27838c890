"""Denoising binarized MNIST with the particle filter, side by side with today's importance sampler
(another checkout) and a 3x3 median filter.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/denoise.py [--store model_store]
        [--name binarized-mnist] [--data PATH.npz] [--rows 100] [--eps 0.05,0.1] [--seed 0]
        [--particles 48] [--baseline /work/today] [--baseline-rows 5] [--rounds 2] [--costs]
        [--write]

Takes the served model (the highest version of --name in --store) and the first --rows images of
the binarized MNIST test set (--data, default $MADE_DATA_DIR/binarized_mnist.npz or
../shared/data/binarized_mnist.npz; without it the script says so and exits 0). For each eps,
flips every bit independently with probability eps (numpy.random.default_rng([seed, round(eps
* 1000)])), then:
- denoises all --rows images in ONE Engine.denoise call with --particles particles per mask
  (what one POST /denoise of them runs; its wall time is what the request timeout must cover);
- reports the bit error rate against the clean images of the noisy images, of `most_likely`
  (p(clean = 1 | noisy) > 1/2: the thresholded marginals), of one posterior sample per image,
  and of a 3x3 median filter (scipy.ndimage.median_filter, edges mirrored), each with a standard
  error over the images; the median ESS as a fraction of the particles (K x --particles); the
  median standard error of log p(noisy);
- times, side by side, the first --baseline-rows images denoised by this checkout and by
  --baseline (a checkout of the main branch before the particle filter, run as a subprocess with
  PYTHONPATH set to it and its default n_importance, 1000 importance draws a mask), alternating
  the two for --rounds rounds, and reports both seconds per image, their ratio (median over
  rounds) and the baseline's bit error on those images.
--costs measures what a particle's value costs in the budget's unit (service.core.budget: a value a
network pass computes): seconds per particle value of denoising over seconds per value of
Engine.mask_logliks, alternated 3 times. Prints a markdown document; --write saves it to
docs/denoise.md. Set OPENBLAS_NUM_THREADS=1 on a shared machine (as the document says).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import model_options, publish  # noqa: E402
from service.engine.denoise import DEFAULT_PARTICLES  # noqa: E402
from service.engine.smc import particles_for  # noqa: E402
from service.settings import data_directory  # noqa: E402

DOC = ROOT / "docs" / "denoise.md"
DATA = data_directory(ROOT) / "binarized_mnist.npz"

# What the baseline checkout runs, in a subprocess: its Engine.denoise with its defaults.
_BASELINE = """
import json, sys, time
import numpy as np
from made.store.versions import open_model
from service.engine.engine import Engine
store, name, path, eps, seed = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
engine = Engine(open_model(store, name), ["CPUExecutionProvider"])
noisy = np.load(path)["noisy"].astype(np.float64)
if eps < 0:  # imputation of the rows' missing values (NaN), its defaults
    engine.impute(noisy[:1], n_samples=1, seed=seed)  # warm
    start = time.perf_counter()
    r = engine.impute(noisy, n_samples=1, seed=seed)
    seconds = time.perf_counter() - start
    np.savez(path, noisy=noisy, marginals=r.marginals, ess=r.ess, stderr=r.stderr)
else:
    engine.denoise(noisy[:1], eps, n_samples=0, seed=seed)  # warm
    start = time.perf_counter()
    r = engine.denoise(noisy, eps, n_samples=0, seed=seed)
    seconds = time.perf_counter() - start
    np.savez(path, noisy=noisy, most_likely=r.most_likely, ess=r.ess)
print(json.dumps({"seconds": seconds}))
"""


def corrupt(clean: np.ndarray, eps: float, seed: int) -> np.ndarray:
    """Every bit flipped independently with probability eps, from its own seeded stream."""
    flips = np.random.default_rng([seed, round(eps * 1000)]).random(clean.shape) < eps
    return np.where(flips, 1 - clean, clean).astype(np.uint8)


def median_filtered(noisy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import median_filter

    return np.stack([median_filter(row.reshape(shape), size=3).ravel() for row in noisy])


def error_rate(guess: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """(bit error rate, its standard error over the images)."""
    per_image = (guess != clean).mean(axis=1)
    return float(per_image.mean()), float(per_image.std(ddof=1) / np.sqrt(len(per_image)))


def pct(rate: tuple[float, float]) -> str:
    return f"{100 * rate[0]:.2f}% ± {100 * rate[1]:.2f}"


def baseline_run(args: argparse.Namespace, noisy: np.ndarray, eps: float, seed: int = 0) -> dict[str, Any]:
    """The baseline checkout's denoising of `noisy` (eps < 0: imputation of its NaNs) with
    `seed`, in a subprocess: seconds and answers."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.npz"
        np.savez(path, noisy=noisy)
        env = {**os.environ, "PYTHONPATH": str(args.baseline)}
        cmd = [sys.executable, "-c", _BASELINE, str(args.store.resolve()), args.name, str(path), str(eps), str(seed)]
        out = subprocess.run(cmd, env=env, cwd=args.baseline, capture_output=True, text=True, check=True)
        answer = dict(np.load(path))
        return {"seconds": float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"]), **answer}


def side_by_side(args: argparse.Namespace, engine: Any, noisy: np.ndarray, eps: float) -> dict[str, Any]:
    """This checkout and the baseline alternated on the same images, --rounds rounds."""
    ours, theirs, last = [], [], {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        engine.denoise(noisy.astype(np.float64), eps, n_samples=0, seed=args.seed, n_importance=args.particles)
        ours.append((time.perf_counter() - start) / len(noisy))
        last = baseline_run(args, noisy, eps)
        theirs.append(last["seconds"] / len(noisy))
    ratio = float(np.median(np.array(theirs) / np.array(ours)))
    return {"ours": float(np.median(ours)), "theirs": float(np.median(theirs)), "ratio": ratio, **last}


def ess_parts(engine: Any, noisy: np.ndarray, eps: float, args: argparse.Namespace) -> tuple[float, float]:
    """Medians over the images of the two parts of `ess`: the ESS within the mask a particle
    belongs to (its islands weighted by their particles), as a fraction of that mask's particles
    (pilot's included), averaged over masks by their posterior, and the effective number of
    masks, 1 / sum of p(k | noisy)^2; from the particle filter itself (service.engine.smc), the
    same particles as Engine.denoise's. With the pilot's allocation a mask's particles follow
    its posterior, so `ess` is no longer their product."""
    from service.engine.denoise import flip_evidence
    from service.engine.smc import particle_filter, posterior

    l0, l1 = flip_evidence(noisy.astype(np.float64), np.full(noisy.shape, eps))
    rows = np.arange(len(noisy))
    rngs = {int(i): np.random.default_rng([args.seed, int(i)]) for i in rows}
    within, masks = [], []
    for particles in particle_filter(engine.sampler, list(range(engine.n_masks)), l0, l1, rows, rngs, args.particles):
        per_mask = posterior(particles).mask_weights
        within.append(float(per_mask @ (1.0 / (particles.sum_sq * particles.particles))))
        masks.append(1.0 / float(per_mask @ per_mask))
    return float(np.median(within)), float(np.median(masks))


def imputation(args: argparse.Namespace, engine: Any, clean: np.ndarray) -> list[str]:
    """The first --impute-rows images with their top half missing (no ordering of the
    order-agnostic masks answers them exactly): /impute here at its default n_importance and at
    --impute-particles, and in the baseline at its defaults, alternated --rounds rounds;
    markdown table rows."""
    few = args.impute_rows
    if few <= 0 or not args.baseline.exists():
        return []
    x = clean[:few].astype(np.float64)
    half = engine.dims // 2
    x[:, :half] = np.nan
    counts = (1000, *args.impute_particles)
    ours_s: dict[int, list[float]] = {c: [] for c in counts}
    ours: dict[int, Any] = {}
    theirs_s, theirs = [], {}
    for _ in range(args.rounds):
        for c in counts:
            start = time.perf_counter()
            ours[c] = engine.impute(x, n_samples=1, seed=args.seed, n_importance=c)
            ours_s[c].append((time.perf_counter() - start) / few)
        theirs = baseline_run(args, x, -1.0)
        theirs_s.append(theirs["seconds"] / few)

    def err(marginals: np.ndarray) -> str:
        return pct(error_rate((marginals[:, :half] > 0.5).astype(np.uint8), clean[:few, :half]))

    def line(
        what: str, seconds: list[float], marginals: np.ndarray, stderr: np.ndarray, ess: np.ndarray, n: int
    ) -> str:
        ratio = float(np.median(np.array(theirs_s) / np.array(seconds)))
        return (
            f"| {what} | {few} | {np.median(seconds):.2f} s | {ratio:.2f}x | {err(marginals)} "
            f"| {np.median(stderr):.2f} | {100 * np.median(ess) / (engine.n_masks * n):.1f}% of {engine.n_masks * n} |"
        )

    rows = [
        line(
            f"particle filter, n_importance {c} ({particles_for(c)} particles a mask)",
            ours_s[c],
            ours[c].marginals,
            ours[c].stderr,
            ours[c].ess,
            particles_for(c),
        )
        for c in counts
    ]
    rows.append(
        line(
            "importance sampler (baseline), n_importance 1000",
            theirs_s,
            theirs["marginals"],
            theirs["stderr"],
            theirs["ess"],
            1000,
        )
    )
    return rows


def costs(engine: Any, clean: np.ndarray, particles: int) -> str:
    """A particle value's cost in the budget's unit, alternated 5 times: each, then their median."""
    x = clean[:200].astype(np.float64)
    noisy = corrupt(clean[:10], 0.1, 0).astype(np.float64)
    ks = list(range(engine.n_masks))
    ratios = []
    for _ in range(5):
        start = time.perf_counter()
        engine.mask_logliks(x, ks)
        unit = (time.perf_counter() - start) / (len(x) * len(ks) * engine.dims)
        start = time.perf_counter()
        engine.denoise(noisy, 0.1, n_samples=0, seed=0, n_importance=particles)
        value = (time.perf_counter() - start) / (len(noisy) * particles * len(ks) * engine.dims)
        ratios.append(value / unit)
    return ", ".join(f"{r:.1f}" for r in ratios) + f" (median {np.median(ratios):.1f})"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(parser, DATA)
    parser.add_argument("--rows", type=int, default=100, help="test images per eps (the first ones), in one call")
    parser.add_argument("--eps", default="0.05,0.1", help="flip probabilities, comma-separated")
    parser.add_argument("--particles", type=int, default=DEFAULT_PARTICLES, help="particles per mask and image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", type=Path, default=Path("/work/today"), help="checkout to compare with")
    parser.add_argument("--baseline-rows", type=int, default=5, help="images timed side by side")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the side-by-side timing")
    parser.add_argument("--impute-rows", type=int, default=10, help="half-missing images imputed side by side")
    parser.add_argument(
        "--impute-particles",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=(4000, 16000),
        help="other n_importance values to time too, comma-separated",
    )
    parser.add_argument("--costs", action="store_true", help="measure a particle value's cost in budget units")
    parser.add_argument("--write", action="store_true", help=f"save the document to {DOC.relative_to(ROOT)}")
    return parser.parse_args(argv)


def denoised(
    args: argparse.Namespace, engine: Any, clean: np.ndarray, shape: tuple[int, int]
) -> tuple[list[str], list[str]]:
    """Per eps: the table row of all images in one call, and the side-by-side row."""
    k, n = engine.n_masks, args.particles
    quality: list[str] = []
    speed: list[str] = []
    for eps in (float(e) for e in args.eps.split(",")):
        noisy = corrupt(clean, eps, args.seed)
        start = time.perf_counter()
        r = engine.denoise(noisy.astype(np.float64), eps, n_samples=1, seed=args.seed, n_importance=n)
        seconds = time.perf_counter() - start
        few = args.baseline_rows
        pair = side_by_side(args, engine, noisy[:few], eps) if args.baseline.exists() and few > 0 else None
        quality.append(
            f"| {eps:g} | {len(clean)} | {pct(error_rate(noisy, clean))} | **{pct(error_rate(r.most_likely, clean))}** "
            f"| {pct(error_rate(r.samples[:, 0], clean))} | {pct(error_rate(median_filtered(noisy, shape), clean))} "
            f"| {100 * np.median(r.ess) / (k * n):.0f}% ({np.median(r.ess):.0f} of {k * n}) "
            f"| {np.median(r.stderr):.2f} | {np.mean(r.logprob_noisy):.1f} "
            f"| {seconds:.1f} s ({seconds / len(clean):.2f} s) |"
        )
        if pair is not None:
            ours = engine.denoise(noisy[:few].astype(np.float64), eps, n_samples=0, seed=args.seed, n_importance=n)
            within, masks = ess_parts(engine, noisy[:few], eps, args)
            speed.append(
                f"| {eps:g} | {few} | {pair['ours']:.2f} s | {pair['theirs']:.2f} s | **{pair['ratio']:.1f}x** "
                f"| {pct(error_rate(ours.most_likely, clean[:few]))} "
                f"| {pct(error_rate(pair['most_likely'], clean[:few]))} "
                f"| {100 * np.median(ours.ess) / (k * n):.0f}% | {100 * np.median(pair['ess']) / (k * 1000):.2f}% "
                f"| {100 * within:.0f}% | {masks:.1f} of {k} |"
            )
        print(f"eps {eps:g}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return quality, speed


# What pooling a mask's islands by their particles costs and buys (measured, not derived here).
ISLAND_POOLING = (
    " A mask's islands are averaged by their particles, each island's own weighted mean: biased, O(1 / "
    "its particles), where weighting each island by its evidence as well (n_i Z_i, the consistent "
    "estimator) is not. That was tried (commit cff246a, reverted) and measured worse on this model, where"
    " the islands' evidence spreads over orders of magnitude and the weights collapse onto one island: "
    "`bench/bit_impute_sweep.py` (the command of docs/bit-impute.md) gave log loss 124.1 against 85.0 "
    "nats at n_importance 1000 and 91.7 against 73.6 at 4000, bit error 10.09% against 9.65% and 9.25% "
    "against 8.74%; this document's command gave the most likely value's bit error 1.16% against 1.07% "
    "(eps 0.05) and 2.27% against 2.01% (0.1), one posterior sample 1.67% against 1.82% and 2.97% against"
    " 3.24%."
)


def document(
    args: argparse.Namespace,
    model: Any,
    engine: Any,
    images: int,
    tables: tuple[list[str], list[str], list[str]],
    cost_line: str | None,
) -> str:
    """The markdown document of the results."""
    from service.core import budget
    from service.engine.smc import PARTICLE_COST
    from service.settings import Settings

    quality, speed, impute_lines = tables
    k, n = engine.n_masks, args.particles
    settings = Settings()
    admitted = settings.max_work // (budget.particles(1, n, k, engine.dims) + budget.passes(1, k, engine.dims))
    load = os.getloadavg()[0]
    options = [
        f" --rows {args.rows}" if args.rows != 100 else "",
        f" --particles {n}" if n != DEFAULT_PARTICLES else "",
        f" --eps {args.eps}" if args.eps != "0.05,0.1" else "",
        f" --seed {args.seed}" if args.seed else "",
        f" --baseline-rows {args.baseline_rows}" if args.baseline_rows != 5 else "",
        f" --rounds {args.rounds}" if args.rounds != 2 else "",
        f" --impute-rows {args.impute_rows}" if args.impute_rows != 10 else "",
        f" --impute-particles {','.join(map(str, args.impute_particles))}"
        if args.impute_particles != (4000, 16000)
        else "",
        " --costs" if args.costs else "",
    ]
    command = "`OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/denoise.py" + "".join(options) + " --write`"
    doc = [
        "# Denoising binarized MNIST",
        "",
        f"Generated by {command} (OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} in this run).",
        "",
        f"Model: `{model.name}` version {model.version} (D={engine.dims}, K={k}); the first {images} images of "
        f"the binarized MNIST test set, every bit flipped independently with probability eps (seed {args.seed}). "
        "Bit error rate against the clean images, ± one standard error over the images. MADE: `POST /denoise` "
        f"with its defaults, {n} particles per mask ({k * n} per image) of the particle filter "
        "(`service/engine/smc.py`): the most likely value of each pixel, p(clean = 1 | noisy) > 1/2 "
        "(`most_likely`, which is the thresholded marginals), and one posterior sample. Median filter: 3x3 "
        "(`scipy.ndimage.median_filter`, edges mirrored) on each noisy 28x28 image. ESS: the effective number "
        "of particles behind each answer (`ess`, 1 / sum of the particles' squared weights), as a fraction of "
        "the particles. Time: the whole eps's images in one engine call, as one request would run them.",
        "",
        "| eps | images | noisy | MADE, most likely value | MADE, one posterior sample | 3x3 median filter "
        "| median ESS | median stderr of log p(noisy) | mean log p(noisy) | time (per image) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *quality,
        "",
    ]
    if speed:
        doc += [
            "## Side by side with the importance sampler",
            "",
            f"The first {args.baseline_rows} images of each eps, denoised by this checkout and by the checkout "
            f"at `{args.baseline}` (the main branch before the particle filter: {k} x 1000 importance draws per "
            f"image, its default), in a subprocess, alternated for {args.rounds} rounds on the same machine; "
            "seconds per image (median over rounds), the ratio (median of the rounds' ratios), bit error of "
            "`most_likely` on those images and the median ESS as a fraction of each one's draws or particles. "
            "So few images because the importance sampler takes seconds an image. The last columns split "
            "the particle filter's ESS: the ESS within the mask a particle belongs to, as a fraction of that "
            "mask's particles (averaged over masks by their posterior), and the effective number of masks "
            "(1 / sum of p(mask | noisy)^2), medians over the images; the pilot's allocation gives the "
            "masks particles in proportion to their posterior, so the ESS is no longer their product.",
            "",
            "| eps | images | particle filter | importance sampler | faster | bit error, particle filter "
            "| bit error, importance sampler | median ESS, particle filter | median ESS, importance sampler "
            "| particle filter: median ESS within a mask | effective masks |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *speed,
            "",
        ]
    if impute_lines:
        doc += [
            "## Imputation of rows no ordering answers exactly",
            "",
            "`/impute` of bits runs the same particle filter for rows whose missing values some mask's ordering "
            "puts before an observed one (the observed values clamped: their probability is the weight), with "
            "⌈`n_importance` / 16⌉ particles per mask (`n_importance`, default 1000, is the work of that many "
            "importance draws a mask everywhere: smc.DRAWS_PER_PARTICLE) where the baseline drew n_importance "
            f"importance draws. The first {args.impute_rows} test images with their top half missing, this "
            f"checkout at n_importance 1000 and {', '.join(map(str, args.impute_particles))} and the baseline at "
            "its default 1000, alternated for "
            f"{args.rounds} rounds: seconds per image, how many times faster than the baseline (median of the "
            "rounds' ratios), bit error of the thresholded marginals on the missing half, median standard error "
            "of log p(observed) (the baseline's is the delta method's on collapsed weights, an underestimate) "
            "and median ESS as a fraction of the K x particles (the baseline: of its K x 1000 draws). On this "
            "model no draw is left once the observed half begins, so the filter never resamples here: it is "
            "likelihood weighting with the pilot's allocation among the masks, whose weights stay uneven (a low "
            "ESS) but fall on the masks that explain the observed half. What each budget buys in bit error and "
            "log loss against the baseline, paired on 100 images and 3 seeds, and why: docs/bit-impute.md "
            "(bench/bit_impute_sweep.py).",
            "",
            "| imputation | images | time per image | faster than the baseline | bit error of the marginals "
            "| median stderr of log p(observed) | median ESS |",
            "|---|---|---|---|---|---|---|",
            *impute_lines,
            "",
        ]
    if cost_line:
        doc += [
            "## What a particle costs",
            "",
            "Seconds per particle value of denoising 10 images over seconds per value of a network pass "
            f"(`Engine.mask_logliks` of 200 images under every mask), 5 alternations: {cost_line} units. "
            "`service/engine/smc.py`'s PARTICLE_COST, what `service/core/budget.py` charges a particle's "
            "value against MADE_MAX_WORK, is rounded up from their median (docs/operations.md).",
            "",
        ]
    doc += [
        "## How it works",
        "",
        "Each mask's particles walk its ordering, each drawing pixel d from p(x_d | x_<d) "
        "tilted by the evidence of the noisy pixel, p(y_d | x_d) (the locally optimal proposal), weighted by "
        "the normaliser; every 16 pixels a set of particles (an island) whose ESS fell below half its size is "
        "resampled (systematic), its hidden state copied with it. The product of the mean weights is an "
        "unbiased estimate of p(noisy) per island. Importance sampling without resampling (the baseline) "
        "leaves a few draws of thousands carrying the answer in 784 dimensions.",
        "",
        "Two stages. A noisy image fits a few masks' models far better than the rest, and the posterior "
        "mixes the masks by p(mask | noisy), so particles spread evenly over the masks would mostly weigh "
        f"little. The pilot: a quarter of each mask's particles ({n // 4} of {n}: smc.PILOT), one island a "
        "mask, estimates each mask's evidence. The second stage: the other three quarters go to the masks in "
        "proportion to the pilot's p(mask | noisy) (smc.allocate), after a floor of one particle per island "
        "and mask, each mask's in 4 islands. p(noisy) and its standard error come from the second stage's "
        "islands only: given the allocation, which depends on the pilot alone, each island's estimate is "
        "unbiased and the islands of a mask are independent (averaging the pilot in with weights that depend "
        "on the allocation would bias it). The posterior uses every particle, the pilot's too (it needs only "
        "consistency): masks mixed by the particle-weighted mean evidence of all their islands, a mask's "
        "islands by their particles." + ISLAND_POOLING,
        "",
        "`ess` is 1 / sum of the particles' squared weights, a particle's weight being its mask's estimated "
        "posterior probability x its island's share of the mask's particles x its normalised weight within "
        "the island, counted against all the particles spent, the pilot's included; `stderr` is the "
        "delta method's on the spread of the second stage's islands' estimates of p(noisy), which are "
        "independent and unbiased. Correctness is checked by enumeration on tiny models "
        "(`tests/test_smc_bits.py`): the mean of the estimate of p (not log p) over 300 seeds within 3 "
        "standard errors of the truth with "
        "resampling after every second step, with the pilot's allocation on (which moves the particles "
        "toward the masks of higher evidence), marginals converging to the exact posterior, the standard "
        "error's coverage, and `/impute` and `/logprob` of inexact rows. The budget: a particle's value "
        f"costs {PARTICLE_COST} units of `MADE_MAX_WORK` ({settings.max_work:,} by default; a unit is a value "
        f"a network pass computes), so the default limit admits {admitted} noisy rows of this model at "
        f"{n} particles a mask in one request, whose timeout is {settings.request_timeout:g} s.",
        "",
        f"Machine: {os.cpu_count()} logical CPUs shared with other jobs (load average {load:.1f} at "
        f"the end), numpy {np.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    return "\n".join(doc)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} is absent (the binarized MNIST test set is needed)", file=sys.stderr)
        return 0

    from made.store.versions import open_model
    from service.engine.engine import Engine

    model = open_model(args.store, args.name)
    engine = Engine(model, ["CPUExecutionProvider"])
    if not engine.image_shape or int(np.prod(engine.image_shape)) != engine.dims:
        print(f"model {args.name} has no image shape; a median filter needs images", file=sys.stderr)
        return 1
    shape = (int(engine.image_shape[0]), int(engine.image_shape[1]))
    clean = np.load(args.data)["test"][: args.rows].astype(np.uint8)
    n = args.particles
    engine.denoise(clean[:1].astype(np.float64), 0.1, n_samples=0, seed=0, n_importance=n)  # warm
    quality, speed = denoised(args, engine, clean, shape)
    impute_lines = imputation(args, engine, clean)
    cost_line = costs(engine, clean, n) if args.costs else None
    text = document(args, model, engine, len(clean), (quality, speed, impute_lines), cost_line)
    publish(text, DOC, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
