"""One APIRouter per endpoint group: health, metrics, models, inference."""
