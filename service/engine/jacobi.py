"""The device path: Jacobi fixed-point sampling and log-likelihoods computed in the graph.

Jacobi sampling (Song et al. 2020, "Accelerating feedforward computation via parallel nonlinear
equation solving"): with the noise u drawn beforehand, an exact sample of mask k is the fixed
point of x <- 1[u < sigmoid(logits_k(x))], taken as the stepping sampler takes it
(sampler.Given.thresholds): x_d = 1 where z_d > logit(u_d), logit(u) = log(u / (1 - u)) in float64
(u = 0 gives -inf: 1), clamped entries with threshold -inf (value 1) or +inf (value 0), soft
evidence moving the threshold by its log-odds. Starting from x = 0, after i passes the first i
positions of the ordering are final (output t reads only positions < t), so at most D passes
reach the sample and one more confirms it; a row whose pass changes nothing is at the fixed
point, which is unique, and leaves the batch. Each pass is one batched forward pass
(the version's stored jacobi_step.onnx, made.store.files) through an onnxruntime session: on a GPU the whole batch
steps on the device. The logits are float32 (the stepping sampler's are float64): a draw can
differ only where |u - p| is below float32 resolution, as between two providers.

The float64 thresholds are rounded down to float32 (the largest float32 <= t): for a float32
logit z, z > t exactly when z > floor32(t), so the in-graph float32 comparison is the float64
rule applied to the float32 logits.

Scores in the graph (the stored scores.onnx and scores_observed.onnx): log p_k(x) of every row for K masks in one
call, the K masks' masked weights stacked (K, fan_in, fan_out) for batched MatMuls, the
softplus terms and their float64 sums and the mixture computed in the graph: the host gets
(K, N) and (N,) numbers instead of K x (N, D) logits.

Where the session's provider is CUDA, both bind their inputs and outputs with onnxruntime's
IOBinding: weights copied to the device once, the Jacobi state (x, thresholds) kept on the
device between passes, only the (N,) `changed` flags read back each pass and the state read
back when the batch is compacted (at most log2 N times) or done. On the CPU the arrays are
shared with onnxruntime without copies (run_with_ort_values), as the engine's dense pass does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.engine.network import MaskWeights
from service.engine.runtime import make_session
from service.engine.sampler import FREE, Draws, Given, Sampler

# Rows per session call: bounds the (rows, D) state and the per-pass temporaries (the hidden
# layers' activations; docs/engine.md gives their size).
JACOBI_ROWS = 4096
# Rows x masks per call of the scores graph on the CPU (it bounds its (K, N, D) temporaries:
# docs/engine.md); a device call takes DEVICE_SCALE times that.
SCORE_CELLS = 4096
DEVICE_SCALE = 16
# Held while an engine builds its Jacobi sampler or graph scores (once each, on first use).
BUILD_LOCK = threading.Lock()


def device_of(providers: list[str]) -> str:
    """'cuda' when the first provider is CUDA's, else 'cpu': where IOBinding puts the arrays."""
    return "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"


def float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= t, elementwise (t float64; infinities stay): for float32 z,
    z > t exactly when z > float32_floor(t)."""
    t32 = t.astype(np.float32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def thresholds(u: np.ndarray, rows: np.ndarray, ordering: np.ndarray, given: Given) -> np.ndarray:
    """(len(rows), D) float32 thresholds on the logits of u[rows], in the mask's positions:
    x = 1 where z > thr. The stepping sampler's rule (Given.thresholds), rounded down to float32."""
    return float32_floor(given.thresholds(u, rows, ordering))


@dataclass
class JacobiRun(Draws):
    passes: np.ndarray  # (N,) int64: forward passes each row took, the confirming one included


class JacobiSampler(Sampler):
    """Exact sampling by Jacobi iteration through one onnxruntime session of the step graph,
    fed each mask's arrays (the engine's feeds: on the CPU the MaskWeights memory itself, on a
    GPU its one device copy). A Sampler, so that it can stand in for the stepping sampler
    (imputation, denoising). Keeps no per-call state: safe under concurrent calls."""

    def __init__(
        self,
        graph: Path,
        masks: list[MaskWeights],
        feeds: list[dict[str, ort.OrtValue]],
        providers: list[str],
        threads: int | None = None,
        bind: bool | None = None,
        rows: int = JACOBI_ROWS,
    ):
        self.masks = masks
        self.dims = len(masks[0].ordering)
        self.n_masks = len(masks)
        self.session = make_session(graph, providers, threads)
        self.providers: list[str] = list(self.session.get_providers())
        self.device = device_of(self.providers)
        # IOBinding (device-resident state) where the provider is CUDA; bind=True forces it on
        # the CPU too (the tests' way to run that code path without a GPU)
        self.bind = self.device == "cuda" if bind is None else bind
        wanted = {i.name for i in self.session.get_inputs()}
        self.feeds = [{name: v for name, v in feed.items() if name in wanted} for feed in feeds]
        self.rows = rows

    def draw(self, masks: np.ndarray, u: np.ndarray, given: Given, return_probs: bool) -> Draws:
        return self.run(masks, u, given, return_probs)

    def run(self, masks: np.ndarray, u: np.ndarray, given: Given = FREE, return_probs: bool = False) -> JacobiRun:
        """Row i under mask masks[i] from uniforms u[i], conditioned on `given` (see
        Sampler.run_masks for the log weights), with the passes each row took. Rows are grouped
        by mask, each group iterated on its own, JACOBI_ROWS rows at a time."""
        n, dims = u.shape
        masks = np.asarray(masks, dtype=np.int64)
        out = JacobiRun(
            samples=np.empty((n, dims), dtype=np.uint8),
            logw=np.zeros(n),
            probs=np.empty((n, dims)) if return_probs else None,
            passes=np.zeros(n, dtype=np.int64),
        )
        need_logits = return_probs or given.weighs
        iterate = self._iterate_bound if self.bind else self._iterate
        for k in np.unique(masks):
            rows_k = np.flatnonzero(masks == k)
            ordering = self.masks[int(k)].ordering
            for start in range(0, len(rows_k), self.rows):
                rows = rows_k[start : start + self.rows]
                xs, logits, passes = iterate(int(k), thresholds(u, rows, ordering, given), need_logits)
                out.passes[rows] = passes
                out.put(rows, ordering, xs, logits, given)
        return out

    def _iterate(self, k: int, thr: np.ndarray, need_logits: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Host-resident state: every pass runs only the rows that have not converged."""
        n, dims = thr.shape
        xs = np.zeros((n, dims), dtype=np.float32)
        logits = np.empty((n, dims), dtype=np.float32) if need_logits else None
        passes = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        names = ["x_next", "changed", "logits"] if need_logits else ["x_next", "changed"]
        feed = self.feeds[k]
        for it in range(1, dims + 2):
            x_act = np.ascontiguousarray(xs[active])
            thr_act = np.ascontiguousarray(thr[active])
            res = self.session.run_with_ort_values(
                names,
                {
                    "xs": ort.OrtValue.ortvalue_from_numpy(x_act),
                    "thr": ort.OrtValue.ortvalue_from_numpy(thr_act),
                    **feed,
                },
            )
            x_next, changed = res[0].numpy(), res[1].numpy()
            passes[active] = it
            done = ~changed if it <= dims else np.ones(len(active), dtype=bool)
            if logits is not None:
                logits[active[done]] = res[2].numpy()[done]
            xs[active] = x_next
            active = active[~done]
            if not len(active):
                break
        return xs, logits, passes

    def _iterate_bound(
        self, k: int, thr: np.ndarray, need_logits: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Device-resident state through IOBinding: x and the thresholds stay on the device
        between passes, each pass reads back only the (rows,) `changed` flags; the state is
        read back, and the batch compacted to its unconverged rows, once at most half of them
        still change (and at the end)."""
        n, dims = thr.shape
        xs = np.zeros((n, dims), dtype=np.float32)
        logits = np.empty((n, dims), dtype=np.float32) if need_logits else None
        passes = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        feed = self.feeds[k]
        dev = self.device

        def upload(a: np.ndarray) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), dev, 0)

        def empty(rows: int) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type((rows, dims), np.float32, dev, 0)

        x_cur, x_nxt, thr_dev = upload(xs), empty(n), upload(thr)
        z_dev = empty(n) if need_logits else None
        still = np.ones(n, dtype=bool)  # rows of the device batch that have not converged
        for it in range(1, dims + 2):
            io = self.session.io_binding()
            io.bind_ortvalue_input("xs", x_cur)
            io.bind_ortvalue_input("thr", thr_dev)
            for name, value in feed.items():
                io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output("x_next", x_nxt)
            io.bind_output("changed", "cpu")
            if z_dev is not None:
                io.bind_ortvalue_output("logits", z_dev)
            self.session.run_with_iobinding(io)
            io.synchronize_outputs()
            changed = io.get_outputs()[1].numpy()
            x_cur, x_nxt = x_nxt, x_cur
            # rows converged in earlier passes stay put (their x is a fixed point): only the
            # rows still iterating count this pass
            passes[active[still]] = it
            still &= changed
            if it > dims:
                still[:] = False
            remaining = int(still.sum())
            if remaining == 0 or remaining <= len(active) // 2:
                # rows that converged in any pass since the last compaction stayed in the batch
                # unchanged (a fixed point maps to itself), so this pass's logits are theirs
                xs[active] = x_cur.numpy()
                if z_dev is not None and logits is not None:
                    logits[active[~still]] = z_dev.numpy()[~still]
                if remaining == 0:
                    break
                active = active[still]
                still = np.ones(len(active), dtype=bool)
                x_cur, x_nxt, thr_dev = upload(xs[active]), empty(len(active)), upload(thr[active])
                z_dev = empty(len(active)) if need_logits else None
        return xs, logits, passes


class GraphScores:
    """log p_k(x) for K masks in one onnxruntime call per chunk of rows (the stored scores graphs),
    the masks' weights stacked (K, fan_in, fan_out) once at construction (K float32 copies of
    the weights: docs/engine.md gives their size), on the device where the provider is CUDA.
    Sessions (with and without the observed-entries input) are built on first use."""

    def __init__(
        self,
        graphs: tuple[Path, Path],
        masks: list[MaskWeights],
        providers: list[str],
        threads: int | None = None,
        bind: bool | None = None,
    ):
        self.graphs, self.threads = graphs, threads  # (without, with the observed-entries input)
        self.requested = providers
        self.n_masks = len(masks)
        self.dims = len(masks[0].ordering)
        self.n_layers = len(masks[0].weights)
        self.direct = masks[0].direct is not None
        stacked: dict[str, np.ndarray] = {"orders": np.stack([m.ordering for m in masks]).astype(np.int64)}
        for l in range(self.n_layers):
            stacked[f"W{l}"] = np.ascontiguousarray(np.stack([m.weights[l].T for m in masks]), dtype=np.float32)
            stacked[f"b{l}"] = np.stack([m.biases[l] for m in masks])[:, None, :].astype(np.float32)
        if self.direct:
            stacked["direct_W"] = np.ascontiguousarray(np.stack([m.direct.T for m in masks if m.direct is not None]))
        self._sessions: dict[bool, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self.providers: list[str] = list(self._session(False).get_providers())
        self.device = device_of(self.providers)
        self.bind = self.device == "cuda" if bind is None else bind
        dev = self.device if self.bind else "cpu"
        # all K masks, and each mask alone: views of the stacked arrays on the CPU (no copy),
        # one device copy each on a GPU
        self._all = {name: ort.OrtValue.ortvalue_from_numpy(a, dev, 0) for name, a in stacked.items()}
        self._one = [
            {
                name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a[k : k + 1]), dev, 0)
                for name, a in stacked.items()
            }
            for k in range(self.n_masks)
        ]
        self._stacked = stacked  # the CPU views above share its memory

    def _session(self, observed: bool) -> ort.InferenceSession:
        session = self._sessions.get(observed)
        if session is None:
            with self._lock:
                session = self._sessions.get(observed)
                if session is None:
                    session = make_session(self.graphs[observed], self.requested, self.threads)
                    self._sessions[observed] = session
        return session

    def scores(
        self, x: np.ndarray, masks: list[int] | None = None, observed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log p_k(x) (len(masks), N) float64, mixture over those masks (N,) float64) for x
        (N, D) of 0/1 (missing entries filled with anything, observed False there)."""
        ks = list(range(self.n_masks)) if masks is None else list(masks)
        xf = np.ascontiguousarray(x, dtype=np.float32)
        obs = None if observed is None else np.ascontiguousarray(observed, dtype=np.float32)
        n = len(xf)
        everything = ks == list(range(self.n_masks))
        groups = [(ks, self._all)] if everything else [([k], self._one[k]) for k in ks]
        logliks = np.empty((len(ks), n))
        mix = np.empty(n)
        cells = SCORE_CELLS * (DEVICE_SCALE if self.device == "cuda" else 1)
        at = 0
        for group, feed in groups:
            step = max(1, cells // len(group))
            part = np.empty((len(group), n))
            for start in range(0, n, step):
                rows = slice(start, start + step)
                ll, m = self._call(feed, xf[rows], None if obs is None else obs[rows])
                part[:, rows] = ll
                if len(groups) == 1:
                    mix[rows] = m
            logliks[at : at + len(group)] = part
            at += len(group)
        if len(groups) > 1:
            top = logliks.max(axis=0)
            mix = top + np.log(np.exp(logliks - top).mean(axis=0))
        return logliks, mix

    def _call(
        self, feed: dict[str, ort.OrtValue], x: np.ndarray, observed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        session = self._session(observed is not None)
        if not self.bind:
            inputs = {"x": ort.OrtValue.ortvalue_from_numpy(x), **feed}
            if observed is not None:
                inputs["observed"] = ort.OrtValue.ortvalue_from_numpy(observed)
            res = session.run_with_ort_values(["logliks", "mixture"], inputs)
            return res[0].numpy(), res[1].numpy()
        io = session.io_binding()
        io.bind_cpu_input("x", x)
        if observed is not None:
            io.bind_cpu_input("observed", observed)
        for name, value in feed.items():
            io.bind_ortvalue_input(name, value)
        io.bind_output("logliks", "cpu")
        io.bind_output("mixture", "cpu")
        session.run_with_iobinding(io)
        io.synchronize_outputs()
        out = io.get_outputs()
        return out[0].numpy(), out[1].numpy()
