"""The torch MADE (training/model.py): normalised per-mask and mixture likelihoods, stable
log-likelihoods, masks kept as buffers and never written into the weights."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.checkpoint import load_tensors, save_tensors
from training.model import MADE, MADEConfig

CONFIGS: dict[str, dict[str, Any]] = {
    "natural-d6": dict(dims=6, hidden=[12]),
    "agnostic-direct-d8-k4": dict(
        dims=8, hidden=[16, 16], n_masks=4, order_agnostic=True, connectivity_agnostic=True, direct=True, mask_seed=1
    ),
    "agnostic-d10-k3": dict(
        dims=10, hidden=[8, 4], n_masks=3, order_agnostic=True, connectivity_agnostic=True, mask_seed=2
    ),
}


def _sharp_model(spec: dict[str, Any], seed: int = 0) -> MADE:
    """A float64 model with weights large enough that its distribution is far from uniform."""
    torch.manual_seed(seed)
    model = MADE(MADEConfig(**spec)).double()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)
    return model


def _all_vectors(dims: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dims)), dtype=torch.float64)


@pytest.mark.parametrize("spec", CONFIGS.values(), ids=list(CONFIGS))
def test_every_mask_and_the_mixture_sum_to_one_over_all_vectors(spec: dict[str, Any]) -> None:
    model = _sharp_model(spec)
    x = _all_vectors(spec["dims"])  # (2^D, D)
    with torch.no_grad():
        per_mask = torch.stack([model.log_prob(x, k) for k in range(model.n_masks)])  # (K, 2^D)
        mixture = model.mixture_log_prob(x)
    for k in range(model.n_masks):
        assert math.isclose(float(per_mask[k].exp().sum()), 1.0, abs_tol=1e-10)
    assert math.isclose(float(mixture.exp().sum()), 1.0, abs_tol=1e-10)
    # far from uniform, so the sums above are not trivially 1
    assert float(per_mask.max() - per_mask.min()) > 3.0


def test_mixture_is_the_mean_of_the_mask_probabilities() -> None:
    model = _sharp_model(CONFIGS["agnostic-direct-d8-k4"])
    x = _all_vectors(8)
    with torch.no_grad():
        probs = np.stack([model.log_prob(x, k).exp().numpy() for k in range(4)])  # (K, N)
        mixture = model.mixture_log_prob(x).numpy()
        subset = model.mixture_log_prob(x, [1, 3]).numpy()
    np.testing.assert_allclose(mixture, np.log(probs.mean(axis=0)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(subset, np.log(probs[[1, 3]].mean(axis=0)), rtol=0, atol=1e-10)


def test_averaging_logits_over_masks_is_not_the_mixture() -> None:
    """The ensemble is a mixture of K models; averaged logits of K orderings do not even give a
    normalised distribution, so an implementation doing that would fail the tests above."""
    model = _sharp_model(CONFIGS["agnostic-direct-d8-k4"])
    x = _all_vectors(8)
    with torch.no_grad():
        mean_logits = torch.stack([model(x, k) for k in range(4)]).mean(dim=0)
        averaged = -F.binary_cross_entropy_with_logits(mean_logits, x, reduction="none").sum(1)
        mixture = model.mixture_log_prob(x)
    assert abs(float(averaged.exp().sum()) - 1.0) > 1e-3
    assert float((averaged - mixture).abs().max()) > 0.1


def test_log_prob_is_the_sum_of_bernoulli_log_likelihoods() -> None:
    model = _sharp_model(CONFIGS["agnostic-d10-k3"])
    x = _all_vectors(10)[::7]
    with torch.no_grad():
        for k in range(3):
            p = torch.sigmoid(model(x, k)).numpy()
            expected = np.sum(np.where(x.numpy() == 1, np.log(p), np.log1p(-p)), axis=1)
            np.testing.assert_allclose(model.log_prob(x, k).numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("magnitude", [100.0, 1e4])
def test_log_likelihood_stays_finite_for_extreme_logits(magnitude: float) -> None:
    torch.manual_seed(0)
    model = MADE(MADEConfig(dims=6, hidden=[8], n_masks=2, order_agnostic=True))
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.zero_()
        model.layers[-1].bias.copy_(magnitude * signs)  # logits = +-magnitude, float32
    agree = (signs > 0).float()  # the row each logit is sure of
    x = torch.stack([agree, 1 - agree, torch.zeros(6), torch.ones(6)])
    mismatches = (x != agree).sum(dim=1).float()
    for k in range(2):
        lp = model.log_prob(x, k)
        assert torch.all(torch.isfinite(lp))
        torch.testing.assert_close(lp, -magnitude * mismatches, rtol=1e-6, atol=1e-4)
    mixture = model.mixture_log_prob(x)
    assert torch.all(torch.isfinite(mixture))
    loss = -model.mixture_log_prob(x).mean()
    loss.backward()
    for param in model.parameters():
        assert param.grad is not None and torch.all(torch.isfinite(param.grad))


def test_mixture_is_stable_when_masks_disagree_by_thousands_of_nats() -> None:
    model = _sharp_model(CONFIGS["agnostic-d10-k3"])
    with torch.no_grad():
        model.layers[-1].weight.mul_(200.0)  # logits in the thousands
        x = _all_vectors(10)[::11]
        per_mask = torch.stack([model.log_prob(x, k) for k in range(3)])
        mixture = model.mixture_log_prob(x)
    assert float(per_mask.min()) < -1000.0
    assert torch.all(torch.isfinite(mixture))
    # log((1/K) sum_k p_k) lies between max_k log p_k - log K and max_k log p_k
    top = per_mask.max(dim=0).values
    assert torch.all(mixture <= top + 1e-9) and torch.all(mixture >= top - math.log(3) - 1e-9)


def test_degrees_are_buffers_saved_with_the_weights_and_restored_exactly(tmp_path: Path) -> None:
    spec = CONFIGS["agnostic-direct-d8-k4"]
    torch.manual_seed(0)
    model = MADE(MADEConfig(**spec))
    buffers = dict(model.named_buffers())
    assert {"input_degrees", "hidden_degrees_0", "hidden_degrees_1"} <= set(buffers)
    assert not any("degrees" in name for name, _ in model.named_parameters())

    save_tensors(tmp_path / "m.safetensors", model.state_dict(), {"config": spec})
    tensors, meta = load_tensors(tmp_path / "m.safetensors")
    assert meta == {"config": spec}

    # a model built with other masks (and already used with them) takes the stored ones
    torch.manual_seed(1)
    other = MADE(MADEConfig(**{**spec, "mask_seed": 99}))
    x = torch.randint(0, 2, (64, 8), generator=torch.Generator().manual_seed(0)).float()
    before = [other(x, k) for k in range(4)]
    other.load_state_dict(tensors)
    for name, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    with torch.no_grad():
        for k in range(4):
            assert torch.equal(other(x, k), model(x, k))
            assert not torch.equal(before[k], model(x, k))
            assert torch.equal(other.log_prob(x, k), model.log_prob(x, k))
        assert torch.equal(other.mixture_log_prob(x), model.mixture_log_prob(x))


def test_masking_never_writes_into_the_weights() -> None:
    torch.manual_seed(0)
    model = MADE(
        MADEConfig(dims=10, hidden=[16, 16], n_masks=3, order_agnostic=True, connectivity_agnostic=True, direct=True)
    )
    weights = [layer.weight for layer in model.layers] + [model.direct.weight]  # type: ignore[union-attr]
    before = [w.detach().clone() for w in weights]
    x = torch.randint(0, 2, (32, 10), generator=torch.Generator().manual_seed(0)).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for k in range(3):
        optimizer.zero_grad()
        (-model.log_prob(x, k).mean()).backward()
        masks = model.masks(k)
        for w, mask in zip(weights, masks[: len(model.layers)] + [masks[-1]], strict=True):
            assert w.grad is not None
            assert torch.all(w.grad[mask == 0] == 0)
            assert torch.any(w.grad[mask == 1] != 0)
    # forward and backward left the weights as they were, masked-out entries included
    for w, b in zip(weights, before, strict=True):
        assert torch.equal(w.detach(), b)
        assert torch.count_nonzero(w) == w.numel()
    # an optimizer step on mask 2 moves only the weights mask 2 uses
    optimizer.zero_grad()
    (-model.log_prob(x, 2).mean()).backward()
    optimizer.step()
    masks = model.masks(2)
    for w, b, mask in zip(weights, before, masks[: len(model.layers)] + [masks[-1]], strict=True):
        assert torch.equal(w.detach()[mask == 0], b[mask == 0])
        assert not torch.equal(w.detach()[mask == 1], b[mask == 1])


def test_moving_the_model_to_another_dtype_rebuilds_its_masks() -> None:
    torch.manual_seed(0)
    model = MADE(MADEConfig(dims=6, hidden=[10], n_masks=2, order_agnostic=True))
    x = torch.randint(0, 2, (16, 6), generator=torch.Generator().manual_seed(0)).float()
    single = model.log_prob(x, 1).detach()
    double = model.double().log_prob(x.double(), 1).detach()
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-5, atol=1e-5)


# --- tanh units, orthogonal initialisation, fresh masks per update (issue 13) ---------------------


def _manual_logits(model: MADE, x: torch.Tensor, masks: list[torch.Tensor], act: Any) -> torch.Tensor:
    """The network written out by hand: act(masked affine) per hidden layer, then the outputs."""
    h = x
    for i, layer in enumerate(model.layers):
        h = h @ (masks[i] * layer.weight).T + layer.bias
        if i < len(model.layers) - 1:
            h = act(h)
    if model.direct is not None:
        h = h + x @ (masks[-1] * model.direct.weight).T
    return h


@pytest.mark.parametrize(("activation", "fn"), [("relu", torch.relu), ("tanh", torch.tanh)])
def test_the_hidden_units_apply_the_configured_activation(activation: str, fn: Any) -> None:
    torch.manual_seed(0)
    config = MADEConfig(dims=7, hidden=[12, 9], n_masks=2, order_agnostic=True, direct=True, activation=activation)
    model = MADE(config)
    x = (torch.rand(50, 7) < 0.5).float()
    for k in range(2):
        with torch.no_grad():
            expected = _manual_logits(model, x, model.masks(k), fn)
            torch.testing.assert_close(model(x, k), expected, rtol=0, atol=1e-6)
            other = torch.relu if activation == "tanh" else torch.tanh
            assert not torch.allclose(model(x, k), _manual_logits(model, x, model.masks(k), other), atol=1e-3)


def test_an_unknown_activation_or_initialisation_is_refused() -> None:
    from made.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown activation 'sigmoid'"):
        MADE(MADEConfig(dims=4, hidden=[8], activation="sigmoid"))
    with pytest.raises(ConfigError, match="unknown initialisation 'glorot'"):
        MADE(MADEConfig(dims=4, hidden=[8], init="glorot"))


def test_orthogonal_initialisation_gives_orthogonal_matrices_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = MADE(MADEConfig(dims=20, hidden=[50, 30], direct=True, init="orthogonal"))
    assert model.direct is not None
    for w in [layer.weight for layer in model.layers] + [model.direct.weight]:
        w = w.detach().double()
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # rows or columns orthonormal
        torch.testing.assert_close(small, torch.eye(min(w.shape), dtype=torch.float64), rtol=0, atol=1e-5)
    for layer in model.layers:
        assert torch.count_nonzero(layer.bias) == 0
    # the default initialisation is torch's, not orthogonal
    w = MADE(MADEConfig(dims=20, hidden=[50])).layers[0].weight.detach()
    assert not torch.allclose(w @ w.T, torch.eye(50), atol=0.1)


def _dependence(model: MADE, masks: list[torch.Tensor], dims: int) -> torch.Tensor:
    """(D, D): entry (d, j) is True where output d's logit depends on input j (Jacobian != 0)."""
    x = (torch.rand(1, dims) < 0.5).float().requires_grad_(True)
    rows = []
    for d in range(dims):
        (grad,) = torch.autograd.grad(model(x, masks=masks)[0, d], x)
        rows.append(grad[0] != 0)
    return torch.stack(rows)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fresh_masks_are_autoregressive_reproducible_and_new(activation: str) -> None:
    torch.manual_seed(0)
    dims = 9
    config = MADEConfig(
        dims=dims,
        hidden=[40, 40],
        n_masks=2,
        order_agnostic=True,
        connectivity_agnostic=True,
        direct=True,
        activation=activation,
        init="orthogonal",
    )
    model = MADE(config)
    for layer in model.layers:  # nonzero biases: a dependence through them would show
        torch.nn.init.normal_(layer.bias)
    orders = set()
    for seed in range(6):
        masks = model.draw_masks(seed)
        for a, b in zip(masks, model.draw_masks(seed), strict=True):
            assert torch.equal(a, b)  # a pure function of the seed
        # the ordering the masks imply: output d sees exactly the inputs before it (direct mask)
        degree = masks[-1].sum(dim=1).long() + 1  # output d sees deg(d) - 1 inputs directly
        assert sorted(degree.tolist()) == list(range(1, dims + 1))
        orders.add(tuple(degree.tolist()))
        seen = _dependence(model, masks, dims)
        allowed = degree[None, :] < degree[:, None]  # (d, j): deg(j) < deg(d)
        assert not (seen & ~allowed).any(), f"seed {seed}: an output sees a later input"
        assert seen.sum() >= allowed.sum() // 2  # and the network does use earlier inputs
    assert len(orders) == 6  # order-agnostic: a new ordering each draw


def test_fresh_masks_keep_what_the_model_does_not_vary() -> None:
    model = MADE(MADEConfig(dims=8, hidden=[30], n_masks=3, connectivity_agnostic=True))  # natural order
    fixed = MADE(MADEConfig(dims=8, hidden=[30], n_masks=1, order_agnostic=True))  # one set of degrees
    position = torch.arange(1, 9, dtype=torch.float32)  # natural order: input j has degree j + 1
    for seed in range(4):
        masks = model.draw_masks(seed)
        m = masks[0].sum(dim=1)  # a unit of degree m sees the inputs of degree <= m
        assert torch.equal(masks[0], (m[:, None] >= position[None, :]).float())
        assert torch.equal(masks[1], (position[:, None] > m[None, :]).float())
        if seed:
            assert not torch.equal(masks[0], model.draw_masks(0)[0])  # new hidden degrees each draw
        # not connectivity-agnostic: every draw keeps mask 0's hidden degrees, under a new ordering
        kept = fixed.draw_masks(seed)
        assert torch.equal(kept[0].sum(dim=1), fixed.hidden_degrees_0[0].float())  # type: ignore[operator]
