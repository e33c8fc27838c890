"""Conditionals of one mask and full conditionals of the mixture, against enumeration."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TinyModel

from made.core.errors import InvalidInput
from service.engine.engine import Engine

MODELS = ["tiny", "tiny1", "tiny10"]


def prefix_conditionals(x_all: np.ndarray, logp: np.ndarray, ordering: np.ndarray) -> np.ndarray:
    """(2^D, D): p(x_d = 1 | the dimensions before d in `ordering`) for every vector, by summing
    the joint p (2^D,) over the dimensions after d."""
    dims = x_all.shape[1]
    table = np.exp(logp).reshape((2,) * dims).transpose(ordering)  # axis i: dimension ordering[i]
    bits = x_all.astype(np.int64)
    out = np.empty(x_all.shape)
    for i, d in enumerate(ordering):
        joint_upto_d = table.sum(axis=tuple(range(i + 1, dims)))  # (2,) * (i + 1)
        cond = joint_upto_d[..., 1] / joint_upto_d.sum(axis=-1)  # (2,) * i
        out[:, d] = cond[tuple(bits[:, ordering[:i]].T)]
    return out


@pytest.mark.parametrize("tiny_model", MODELS, indirect=True)
def test_conditionals_of_mask_k_equal_its_enumerated_prefix_conditionals(tiny_model: TinyModel) -> None:
    engine, x_all = tiny_model.engine, tiny_model.x_all
    for k in range(engine.n_masks):
        expected = prefix_conditionals(x_all, tiny_model.logp[k], engine.orderings[k])
        np.testing.assert_allclose(engine.conditionals(x_all, k), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tiny_model", ["tiny"], indirect=True)
def test_the_first_dimension_of_an_ordering_gets_its_marginal_whatever_the_row(tiny_model: TinyModel) -> None:
    engine, x_all = tiny_model.engine, tiny_model.x_all
    for k in range(engine.n_masks):
        first = engine.conditionals(x_all, k)[:, engine.orderings[k][0]]
        np.testing.assert_allclose(first, first[0], rtol=0, atol=1e-7)


@pytest.mark.parametrize("tiny_model", MODELS, indirect=True)
def test_full_conditionals_equal_enumerated_conditionals_given_every_other_dimension(tiny_model: TinyModel) -> None:
    x_all = tiny_model.x_all
    p = np.exp(tiny_model.logp).mean(axis=0)  # the mixture, (2^D,)
    dims = tiny_model.engine.dims
    index = np.arange(len(x_all))
    expected = np.empty(x_all.shape)
    for d in range(dims):
        bit = 1 << (dims - 1 - d)  # row i of x_all is i in binary, dimension 0 first
        expected[:, d] = p[index | bit] / (p[index | bit] + p[index & ~bit])
    got = tiny_model.engine.full_conditionals(x_all)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tiny_model", ["tiny"], indirect=True)
def test_full_conditionals_are_the_sigmoid_of_the_log_probability_difference(tiny_model: TinyModel) -> None:
    engine = tiny_model.engine
    x = tiny_model.x_all[::37]
    got = engine.full_conditionals(x)
    for d in range(engine.dims):
        ones, zeros = x.copy(), x.copy()
        ones[:, d], zeros[:, d] = 1, 0
        diff = engine.logprob(ones).logprob - engine.logprob(zeros).logprob
        np.testing.assert_allclose(got[:, d], 1 / (1 + np.exp(-diff)), rtol=0, atol=1e-6)


def test_conditionals_refuse_a_missing_value_naming_row_and_column(
    tiny_engines: dict[str, Engine],
) -> None:
    x = np.zeros((2, 8))
    x[1, 6] = np.nan
    with pytest.raises(InvalidInput, match="row 1 column 6 is missing"):
        tiny_engines["tiny"].conditionals(x, 0)
    with pytest.raises(InvalidInput, match="row 1 column 6 is missing"):
        tiny_engines["tiny"].full_conditionals(x)


def test_conditionals_refuse_a_mask_out_of_range(tiny_engines: dict[str, Engine]) -> None:
    with pytest.raises(InvalidInput, match="mask 1 is out of range"):
        tiny_engines["tiny1"].conditionals(np.zeros((1, 8)), 1)
