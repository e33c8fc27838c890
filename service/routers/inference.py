"""Inference: log-probabilities, conditionals, samples, imputations, denoising. Each names its
model or gets the default; the data plane does the work."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from service.routers.deps import DataPlaneDep
from service.schemas import (
    ConditionalsRequest,
    ConditionalsResponse,
    DenoiseRequest,
    DenoiseResponse,
    ErrorResponse,
    ImputeRequest,
    ImputeResponse,
    LogProbRequest,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
)

router = APIRouter(tags=["inference"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "body over MADE_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "body sent as another type than application/json"},
    422: {"model": ErrorResponse, "description": "invalid input: names the row, column, problem"},
    503: {"model": ErrorResponse, "description": "models not loaded yet"},
    504: {"model": ErrorResponse, "description": "over MADE_REQUEST_TIMEOUT"},
}


def _wants_png(accept: str | None) -> bool:
    """True when the client ranks image/png above JSON (a bare `*/*` keeps JSON)."""
    if not accept:
        return False
    best: tuple[float, str] = (-1.0, "")
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media in {"image/png", "application/json"} and q > best[0]:
            best = (q, media)
    return best[1] == "image/png"


@router.post("/logprob", responses=ERRORS, response_model_exclude_none=True)
async def logprob(req: LogProbRequest, dp: DataPlaneDep) -> LogProbResponse:
    """log p(x) per row in nats; missing values (null) summed out."""
    return await dp.logprob(req)


@router.post("/conditionals", responses=ERRORS, response_model_exclude_none=True)
async def conditionals(req: ConditionalsRequest, dp: DataPlaneDep) -> ConditionalsResponse:
    """p(x_d = 1 | the dimensions before d in mask k's ordering), per row and dimension; for a
    table model's records, each column's distribution given the columns before it."""
    return await dp.conditionals(req)


@router.post(
    "/sample",
    response_model=SampleResponse,
    response_model_exclude_none=True,
    responses={
        **ERRORS,
        200: {
            "content": {"image/png": {}},
            "description": "JSON; or, with `Accept: image/png` on a model with image_shape, a grid",
        },
        406: {"model": ErrorResponse, "description": "image/png asked of a model without image_shape"},
    },
)
async def sample(
    req: SampleRequest,
    dp: DataPlaneDep,
    accept: Annotated[str | None, Header()] = None,
    scale: Annotated[int, Query(ge=1, le=16, description="PNG pixels per model pixel")] = 2,
) -> SampleResponse | Response:
    """n exact samples; the same seed on the same model version gives the same samples."""
    if _wants_png(accept):
        png, seed = await dp.sample_png(req, scale)
        return Response(png, media_type="image/png", headers={"X-Seed": str(seed)})
    return await dp.sample(req)


@router.post("/impute", responses=ERRORS, response_model_exclude_none=True)
async def impute(req: ImputeRequest, dp: DataPlaneDep) -> ImputeResponse:
    """Completions of the missing values (null) given the observed ones, with marginals."""
    return await dp.impute(req)


@router.post("/denoise", responses=ERRORS, response_model_exclude_none=True)
async def denoise(req: DenoiseRequest, dp: DataPlaneDep) -> DenoiseResponse:
    """The clean rows behind noisy ones (each bit flipped with probability eps): per-entry
    marginals p(clean = 1 | noisy), the most likely value of each entry, clean samples,
    log p(noisy) with its standard error and the effective sample size."""
    return await dp.denoise(req)
