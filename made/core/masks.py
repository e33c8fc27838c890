"""Connectivity degrees and masks of MADE (Germain et al. 2015), in numpy only.

A mask set is K orderings plus K sets of hidden-unit degrees; those integers are all
that is stored (in checkpoints, manifests and ONNX graphs) and every dense mask is
rebuilt from them by broadcast comparisons here, so training, export and serving agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from made.core.errors import ConfigError


@dataclass(frozen=True)
class MaskSet:
    """K masks: `orderings[k]` lists the dimensions in the order mask k generates them."""

    orderings: np.ndarray  # (K, D) int64, each row a permutation of range(D)
    hidden_degrees: tuple[np.ndarray, ...]  # one (K, H_l) int64 array per hidden layer

    @property
    def n_masks(self) -> int:
        return int(self.orderings.shape[0])

    @property
    def dims(self) -> int:
        return int(self.orderings.shape[1])

    def input_degrees(self) -> np.ndarray:
        """(K, D): the degree (1-based position in the ordering) of every input dimension."""
        return orderings_to_degrees(self.orderings)

    def masks(self, k: int) -> list[np.ndarray]:
        """Dense 0/1 float32 masks of mask k, shaped like torch weights (out, in), last = output."""
        return build_masks(self.input_degrees()[k], [h[k] for h in self.hidden_degrees])

    def direct_mask(self, k: int) -> np.ndarray:
        return build_direct_mask(self.input_degrees()[k])


def orderings_to_degrees(orderings: np.ndarray) -> np.ndarray:
    """(K, D) orderings -> (K, D) degrees: degree[k, orderings[k, i]] = i + 1."""
    orderings = np.asarray(orderings, dtype=np.int64)
    k, d = orderings.shape
    degrees = np.empty_like(orderings)
    degrees[np.arange(k)[:, None], orderings] = np.arange(1, d + 1)[None, :]
    return degrees


def build_masks(
    input_degrees: np.ndarray, hidden_degrees: list[np.ndarray], output_degrees: np.ndarray | None = None
) -> list[np.ndarray]:
    """Masks of one network from its degrees; each mask is (fan_out, fan_in) float32.

    Hidden unit k of layer l keeps unit j of layer l-1 when m_l(k) >= m_{l-1}(j); output d keeps
    last-layer unit k when deg(d) > m_L(k) (strict), so output d sees only earlier inputs.
    output_degrees defaults to input_degrees (one output per input); a table model gives every
    input and output unit its column's degree (made.core.schema).
    """
    masks = []
    prev = np.asarray(input_degrees)
    for layer in hidden_degrees:
        layer = np.asarray(layer)
        masks.append((layer[:, None] >= prev[None, :]).astype(np.float32))
        prev = layer
    out = np.asarray(input_degrees if output_degrees is None else output_degrees)
    masks.append((out[:, None] > prev[None, :]).astype(np.float32))
    return masks


def build_direct_mask(input_degrees: np.ndarray, output_degrees: np.ndarray | None = None) -> np.ndarray:
    """(D_out, D_in) mask of direct input-to-output weights: output d sees input j iff deg(j) < deg(d)."""
    deg = np.asarray(input_degrees)
    out = deg if output_degrees is None else np.asarray(output_degrees)
    return (out[:, None] > deg[None, :]).astype(np.float32)


def validate_architecture(dims: int, hidden: list[int], n_masks: int) -> None:
    """Refuse configurations that cannot make a MADE, with the reason."""
    if dims < 2:
        raise ConfigError(f"MADE needs at least 2 dimensions, got {dims}")
    if any(h < 1 for h in hidden):
        raise ConfigError(f"hidden layer widths must be positive, got {hidden}")
    if n_masks < 1:
        raise ConfigError(f"the number of masks must be at least 1, got {n_masks}")


def sample_hidden_degrees(dims: int, hidden: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Draw hidden degrees as in the paper: layer l from [min of layer l-1's degrees, D-1].

    Every unit then has an input. So that every unit also has an output (a layer narrower than
    D could otherwise leave high-degree units dead), layer l+1 gets at least one unit whose degree
    reaches layer l's maximum.
    """
    degrees: list[np.ndarray] = []
    low = 1
    prev_max = 1
    for width in hidden:
        layer = rng.integers(low, dims, size=width)
        if layer.max() < prev_max:
            layer[int(np.argmax(layer))] = prev_max
        degrees.append(layer.astype(np.int64))
        low = int(layer.min())
        prev_max = int(layer.max())
    return degrees


def make_mask_set(
    dims: int,
    hidden: list[int],
    n_masks: int = 1,
    *,
    order_agnostic: bool = False,
    connectivity_agnostic: bool = False,
    random_ordering: bool = False,
    seed: int = 0,
) -> MaskSet:
    """The K masks of a model, a pure function of its arguments and seed.

    order_agnostic: each mask gets its own random ordering (else all share one ordering: natural,
    or one random permutation when random_ordering). connectivity_agnostic: each mask draws new
    hidden degrees (else all share mask 0's).
    """
    validate_architecture(dims, hidden, n_masks)
    rng = np.random.default_rng(seed)
    base_order = rng.permutation(dims) if random_ordering else np.arange(dims)
    base_hidden = sample_hidden_degrees(dims, hidden, rng)
    orderings = np.empty((n_masks, dims), dtype=np.int64)
    per_layer: list[list[np.ndarray]] = [[] for _ in hidden]
    for k in range(n_masks):
        orderings[k] = base_order if (k == 0 or not order_agnostic) else rng.permutation(dims)
        layers = base_hidden if (k == 0 or not connectivity_agnostic) else sample_hidden_degrees(dims, hidden, rng)
        for store, layer in zip(per_layer, layers, strict=True):
            store.append(layer)
    hidden_degrees = tuple(np.stack(layer_list) for layer_list in per_layer)
    return MaskSet(orderings=orderings, hidden_degrees=hidden_degrees)


def exact_orders(orderings: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(K, N) bool: True where mask k's ordering puts every observed dimension of row n first.

    observed is (N, D) bool. Then p_k(x_O) is one pass and sampling x_M given x_O is exact.
    """
    observed = np.asarray(observed, dtype=bool)
    in_order = observed[:, np.asarray(orderings)]  # (N, K, D): observed flags in each mask's order
    # every observed precedes every missing <=> the flags are non-increasing along the order
    ok = np.all(in_order[..., :-1] >= in_order[..., 1:], axis=-1)
    return ok.T
