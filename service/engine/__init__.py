"""Inference engine on onnxruntime: numpy in, numpy out. Imports neither torch nor fastapi."""

from service.engine.engine import Engine
from service.engine.missing import ImputeResult, LogProbResult
from service.engine.registry import ModelRegistry
from service.engine.runtime import make_session, requested_providers

__all__ = ["Engine", "ImputeResult", "LogProbResult", "ModelRegistry", "make_session", "requested_providers"]
