"""Degrees and masks (made/core/masks.py) and the autoregressive property of the torch model built
from them: output d never depends on an input at or after d in its mask's ordering."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from made.core.errors import ConfigError
from made.core.masks import (
    build_masks,
    exact_orders,
    make_mask_set,
    orderings_to_degrees,
    sample_hidden_degrees,
)
from training.model import MADE, MADEConfig

# Mask sets the property must hold for: every kind of ordering and connectivity, 1-3 hidden
# layers, direct connections, and hidden layers narrower than D.
MASK_SETS: dict[str, dict[str, Any]] = {
    "natural-1layer": dict(dims=12, hidden=[24]),
    "random-ordering-2layers": dict(dims=12, hidden=[20, 20], random_ordering=True, mask_seed=3),
    "order-agnostic-k4": dict(dims=10, hidden=[16, 16], n_masks=4, order_agnostic=True),
    "connectivity-agnostic-k4": dict(dims=10, hidden=[16, 16], n_masks=4, connectivity_agnostic=True, mask_seed=5),
    "both-agnostic-3layers-k3": dict(
        dims=9, hidden=[12, 10, 12], n_masks=3, order_agnostic=True, connectivity_agnostic=True, mask_seed=7
    ),
    "direct-k3": dict(dims=8, hidden=[16], n_masks=3, order_agnostic=True, direct=True),
    "narrow-d20-5-3": dict(
        dims=20, hidden=[5, 3], n_masks=4, order_agnostic=True, connectivity_agnostic=True, mask_seed=11
    ),
    "narrow-direct-d20-4": dict(dims=20, hidden=[4], n_masks=2, random_ordering=True, direct=True),
}


def _model(spec: dict[str, Any]) -> MADE:
    torch.manual_seed(0)
    model = MADE(MADEConfig(**spec)).double()
    with torch.no_grad():
        for layer in model.layers[:-1]:
            layer.bias.add_(0.5)  # most units active, so that narrow layers are not all dead
    return model


def _random_binary(n: int, dims: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, dims), generator=gen).double()


def _forbidden(degrees: np.ndarray) -> torch.Tensor:
    """(D_out, D_in) True where input j is at or after output d in the ordering."""
    return torch.from_numpy(degrees[None, :] >= degrees[:, None])


def _structural_paths(model: MADE, k: int) -> np.ndarray:
    """(D_out, D_in) number of masked paths from each input to each output (plus direct)."""
    dense = [m.numpy().astype(np.int64) for m in model.masks(k)]
    n_layers = len(model.layers)
    paths = dense[0]
    for mask in dense[1:n_layers]:
        paths = mask @ paths
    if model.direct is not None:
        paths = paths + dense[-1]
    return paths


@pytest.mark.parametrize("spec", MASK_SETS.values(), ids=list(MASK_SETS))
def test_masks_only_connect_outputs_to_earlier_inputs(spec: dict[str, Any]) -> None:
    model = _model(spec)
    for k in range(model.n_masks):
        degrees = model.input_degrees[k].numpy()
        paths = _structural_paths(model, k)
        assert np.all(paths[_forbidden(degrees).numpy()] == 0)
        # and the masks are not trivially empty: the last output in the ordering sees something
        assert paths[int(np.argmax(degrees))].sum() > 0


@pytest.mark.parametrize("spec", MASK_SETS.values(), ids=list(MASK_SETS))
def test_gradient_of_output_d_is_exactly_zero_for_inputs_at_or_after_d(spec: dict[str, Any]) -> None:
    model = _model(spec)
    x = _random_binary(8, spec["dims"], seed=1)
    for k in range(model.n_masks):
        # (D, N, D): d logits[n, d] / d x[n', j]; rows are independent, so sum over n first
        jac = torch.autograd.functional.jacobian(lambda v, k=k: model(v, k).sum(0), x)
        per_row = torch.stack([jac[:, n, :] for n in range(len(x))])  # (N, D_out, D_in)
        forbidden = _forbidden(model.input_degrees[k].numpy())
        assert torch.all(per_row[:, forbidden] == 0)
        assert torch.any(per_row[:, ~forbidden] != 0)


@pytest.mark.parametrize("spec", MASK_SETS.values(), ids=list(MASK_SETS))
def test_jacobian_with_active_units_matches_the_masked_paths(spec: dict[str, Any]) -> None:
    """With positive weights and biases every ReLU is active and no two paths cancel: the
    Jacobian is nonzero exactly where the masks leave a path, so the forward uses these masks."""
    model = _model(spec)
    with torch.no_grad():
        for param in model.parameters():
            param.abs_().add_(0.01)
    x = _random_binary(2, spec["dims"], seed=2)
    for k in range(model.n_masks):
        jac = torch.autograd.functional.jacobian(lambda v, k=k: model(v, k).sum(0), x)[:, 0, :]
        paths = _structural_paths(model, k)
        assert np.array_equal(jac.numpy() != 0, paths != 0)


@pytest.mark.parametrize("spec", MASK_SETS.values(), ids=list(MASK_SETS))
def test_perturbing_inputs_at_or_after_d_leaves_output_d_unchanged(spec: dict[str, Any]) -> None:
    model = _model(spec)
    dims = spec["dims"]
    x = _random_binary(32, dims, seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for k in range(model.n_masks):
            degrees = model.input_degrees[k]
            base = model(x, k)
            changed_any = False
            for d in range(dims):
                later = degrees >= degrees[d]  # d itself and everything after it
                noise = torch.randint(0, 2, (len(x), int(later.sum())), generator=gen).double()
                x2 = x.clone()
                x2[:, later] = noise
                out = model(x2, k)
                assert torch.equal(out[:, d], base[:, d]), f"mask {k} output {d} moved"
                earlier_out = degrees > degrees[d]
                changed_any |= bool((out[:, earlier_out] != base[:, earlier_out]).any())
            # the perturbations were real: outputs after the perturbed inputs did move
            assert changed_any


@pytest.mark.parametrize(
    ("dims", "hidden"),
    [(20, [5, 3]), (20, [1]), (20, [3, 1, 3]), (50, [2, 2, 2]), (2, [1]), (3, [7, 1])],
)
def test_narrow_hidden_layers_leave_no_unit_without_input_or_output(dims: int, hidden: list[int]) -> None:
    for seed in range(25):
        masks = make_mask_set(dims, hidden, 4, order_agnostic=True, connectivity_agnostic=True, seed=seed)
        for k in range(masks.n_masks):
            dense = masks.masks(k)  # (fan_out, fan_in) per layer, last = output
            for layer in range(len(hidden)):
                assert np.all(dense[layer].sum(axis=1) > 0), f"seed {seed} mask {k}: no input"
                assert np.all(dense[layer + 1].sum(axis=0) > 0), f"seed {seed} mask {k}: no output"


def test_hidden_degrees_lie_between_the_previous_minimum_and_d_minus_1() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        dims = int(rng.integers(2, 30))
        hidden = [int(h) for h in rng.integers(1, 40, size=int(rng.integers(1, 4)))]
        layers = sample_hidden_degrees(dims, hidden, rng)
        low = 1
        for width, layer in zip(hidden, layers, strict=True):
            assert layer.shape == (width,)
            assert layer.min() >= low and layer.max() <= dims - 1
            low = int(layer.min())


@pytest.mark.parametrize(
    ("dims", "hidden", "n_masks"),
    [(1, [10], 1), (0, [10], 1), (-3, [10], 1), (10, [0], 1), (10, [8, 0], 1), (10, [-2], 1), (10, [8], 0)],
)
def test_impossible_architectures_are_refused(dims: int, hidden: list[int], n_masks: int) -> None:
    with pytest.raises(ConfigError):
        make_mask_set(dims, hidden, n_masks)
    with pytest.raises(ConfigError):
        MADE(MADEConfig(dims=dims, hidden=hidden, n_masks=n_masks))


def test_same_seed_gives_the_same_masks_and_another_seed_other_masks() -> None:
    kwargs: dict[str, Any] = dict(order_agnostic=True, connectivity_agnostic=True)
    a = make_mask_set(15, [20, 20], 5, seed=42, **kwargs)
    b = make_mask_set(15, [20, 20], 5, seed=42, **kwargs)
    c = make_mask_set(15, [20, 20], 5, seed=43, **kwargs)
    assert np.array_equal(a.orderings, b.orderings)
    assert all(np.array_equal(x, y) for x, y in zip(a.hidden_degrees, b.hidden_degrees, strict=True))
    for k in range(5):
        assert all(np.array_equal(x, y) for x, y in zip(a.masks(k), b.masks(k), strict=True))
    assert not np.array_equal(a.orderings, c.orderings)
    assert not all(np.array_equal(x, y) for x, y in zip(a.hidden_degrees, c.hidden_degrees, strict=True))


def test_make_mask_set_does_not_touch_global_random_state() -> None:
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    make_mask_set(10, [8], 3, order_agnostic=True, connectivity_agnostic=True, seed=9)
    assert np.array_equal(np.random.random(3), expected)


def test_orderings_follow_the_options() -> None:
    natural = make_mask_set(9, [12], 3)
    assert np.array_equal(natural.orderings, np.tile(np.arange(9), (3, 1)))
    # without connectivity agnosticism the K masks share their hidden degrees
    assert all(np.all(layer == layer[0]) for layer in natural.hidden_degrees)

    shuffled = make_mask_set(9, [12], 3, random_ordering=True, seed=1)
    assert np.all(shuffled.orderings == shuffled.orderings[0])
    assert not np.array_equal(shuffled.orderings[0], np.arange(9))

    agnostic = make_mask_set(9, [12], 4, order_agnostic=True, seed=1)
    assert len({tuple(o) for o in agnostic.orderings}) == 4
    for order in agnostic.orderings:
        assert sorted(order) == list(range(9))

    connectivity = make_mask_set(9, [12, 12], 4, connectivity_agnostic=True, seed=1)
    assert np.all(connectivity.orderings == np.arange(9))
    for layer in connectivity.hidden_degrees:
        assert layer.shape == (4, 12)
        assert len({tuple(row) for row in layer}) == 4


def test_orderings_to_degrees_inverts_the_orderings() -> None:
    rng = np.random.default_rng(5)
    orderings = np.stack([rng.permutation(11) for _ in range(6)])
    degrees = orderings_to_degrees(orderings)
    for order, deg in zip(orderings, degrees, strict=True):
        for position, dim in enumerate(order):
            assert deg[dim] == position + 1
    assert np.array_equal(np.argsort(degrees, axis=1), orderings)


def test_build_masks_compares_degrees_as_in_the_paper() -> None:
    inp = np.array([3, 1, 2])
    h1 = np.array([1, 2, 2, 1])
    masks = build_masks(inp, [h1])
    for k, j in itertools.product(range(4), range(3)):
        assert masks[0][k, j] == (h1[k] >= inp[j])
    for d, k in itertools.product(range(3), range(4)):
        assert masks[1][d, k] == (inp[d] > h1[k])
    assert [m.shape for m in masks] == [(4, 3), (3, 4)]


def test_direct_mask_lets_output_d_see_exactly_the_earlier_inputs() -> None:
    masks = make_mask_set(7, [10], 3, order_agnostic=True, seed=2)
    for k in range(3):
        order = masks.orderings[k]
        direct = masks.direct_mask(k)
        # in the ordering's own coordinates the mask is strictly lower triangular, all ones
        permuted = direct[np.ix_(order, order)]
        assert np.array_equal(permuted, np.tril(np.ones((7, 7), dtype=np.float32), k=-1))


def _exact_orders_by_definition(orderings: np.ndarray, observed: np.ndarray) -> np.ndarray:
    result = np.zeros((len(orderings), len(observed)), dtype=bool)
    for k, order in enumerate(orderings):
        position = np.argsort(order)  # position[d]: where dimension d comes in the ordering
        for n, row in enumerate(observed):
            obs, miss = position[row], position[~row]
            result[k, n] = len(obs) == 0 or len(miss) == 0 or obs.max() < miss.min()
    return result


def test_exact_orders_is_true_when_every_observed_dimension_comes_first() -> None:
    orderings = np.array([[2, 0, 1, 3], [0, 1, 2, 3], [3, 2, 1, 0]])
    observed = np.array(
        [
            [False, False, True, False],  # {2}: first in mask 0 only
            [True, True, False, False],  # {0, 1}: a prefix of mask 1 only
            [True, True, True, True],  # nothing missing: exact everywhere
            [False, False, False, False],  # nothing observed: exact everywhere
            [False, False, True, True],  # {2, 3}: a prefix of mask 2
        ]
    )
    expected = np.array(
        [
            [True, False, True, True, False],
            [False, True, True, True, False],
            [False, False, True, True, True],
        ]
    )
    assert np.array_equal(exact_orders(orderings, observed), expected)

    rng = np.random.default_rng(0)
    orderings = np.stack([rng.permutation(6) for _ in range(5)])
    observed = rng.random((200, 6)) < 0.5
    # include every prefix of every ordering so that True cases are plentiful
    prefixes = np.zeros((5 * 7, 6), dtype=bool)
    for k, t in itertools.product(range(5), range(7)):
        prefixes[k * 7 + t, orderings[k, :t]] = True
    observed = np.concatenate([observed, prefixes])
    got = exact_orders(orderings, observed)
    assert got.shape == (5, len(observed))
    assert np.array_equal(got, _exact_orders_by_definition(orderings, observed))
    assert got.any() and not got.all()
