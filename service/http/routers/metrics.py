"""Prometheus metrics in the text exposition format (open even when an API key is set)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "metrics"}},
)
async def metrics(request: Request) -> Response:
    """Requests, latency, errors and batch sizes per endpoint and model."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
