"""Engine.logprob on complete rows, checked by enumerating all 2^D vectors of the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from made.core.errors import InvalidInput
from service.engine.engine import Engine

MODELS = ["tiny", "tiny1", "tiny10"]
Joint = dict[str, tuple[np.ndarray, np.ndarray]]  # see the tiny_joint fixture


@pytest.mark.parametrize("name", MODELS)
def test_mixture_probabilities_sum_to_one_over_all_vectors(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    x, _ = tiny_joint[name]
    result = tiny_engines[name].logprob(x)
    assert np.exp(result.logprob).sum() == pytest.approx(1.0, abs=1e-6)
    assert result.exact.all() and np.isnan(result.stderr).all()


@pytest.mark.parametrize("name", MODELS)
def test_each_mask_alone_sums_to_one_and_equals_the_stored_graphs_logits(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    x, reference = tiny_joint[name]  # reference: bare onnxruntime on model.onnx, float64
    engine = tiny_engines[name]
    for k in range(engine.n_masks):
        logp = engine.logprob(x, masks=k).logprob
        assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(logp, reference[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_mixture_is_logsumexp_of_the_masks_minus_log_k(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    x, _ = tiny_joint[name]
    engine = tiny_engines[name]
    per_mask = np.stack([engine.logprob(x, masks=k).logprob for k in range(engine.n_masks)])
    expected = logsumexp(per_mask, axis=0) - np.log(engine.n_masks)
    np.testing.assert_allclose(engine.logprob(x, masks="all").logprob, expected, rtol=0, atol=1e-9)


def test_masks_of_an_agnostic_model_are_different_distributions(
    tiny_joint: Joint,
) -> None:
    # otherwise the mixture tests above would not tell a mask mix-up from the right answer
    _, reference = tiny_joint["tiny"]
    assert all(np.abs(reference[0] - reference[k]).max() > 0.05 for k in range(1, len(reference)))


def test_a_row_scores_the_same_alone_and_in_a_batch(tiny_engines: dict[str, Engine], tiny_joint: Joint) -> None:
    x, _ = tiny_joint["tiny10"]
    engine = tiny_engines["tiny10"]
    batch = engine.logprob(x).logprob
    for i in (0, 17, 1023):  # to the bit: a single row is not multiplied by another kernel
        assert engine.logprob(x[i : i + 1]).logprob[0] == batch[i]


def test_an_empty_batch_gives_an_empty_result(tiny_engines: dict[str, Engine]) -> None:
    result = tiny_engines["tiny"].logprob(np.zeros((0, 8)))
    assert result.logprob.shape == result.exact.shape == result.stderr.shape == (0,)


@pytest.mark.parametrize("mask", [4, -1, True, 1.0, "first"])
def test_an_invalid_mask_is_refused_with_the_valid_range(tiny_engines: dict[str, Engine], mask: object) -> None:
    with pytest.raises(InvalidInput, match="mask") as info:
        tiny_engines["tiny"].logprob(np.zeros((1, 8)), masks=mask)  # type: ignore[arg-type]
    assert "'all'" in str(info.value) or "0..3" in str(info.value)


@pytest.mark.parametrize("width", [7, 9])
def test_a_row_of_the_wrong_width_is_refused_naming_the_column_count(
    tiny_engines: dict[str, Engine], width: int
) -> None:
    with pytest.raises(InvalidInput, match=f"x has {width} columns, model tiny has 8 dimensions"):
        tiny_engines["tiny"].logprob(np.zeros((2, width)))


def test_a_one_dimensional_x_is_refused_with_its_shape(tiny_engines: dict[str, Engine]) -> None:
    with pytest.raises(InvalidInput, match=r"2-D array .* got shape \(8,\)"):
        tiny_engines["tiny"].logprob(np.zeros(8))


@pytest.mark.parametrize(("value", "shown"), [(0.5, "0.5"), (2.0, "2"), (-1.0, "-1"), (np.inf, "inf")])
def test_a_non_binary_value_is_refused_naming_its_row_and_column(
    tiny_engines: dict[str, Engine], value: float, shown: str
) -> None:
    x = np.zeros((3, 8))
    x[2, 5] = value
    with pytest.raises(InvalidInput, match=f"^row 2 column 5 holds {shown}, expected 0 or 1$"):
        tiny_engines["tiny"].logprob(x)
