"""The error hierarchy users see: one clear sentence each, mapped to exit 2 or HTTP 4xx in one place."""


class MadeError(Exception):
    """Base of every error caused by bad input, bad files or bad settings (never a bug)."""


class DataError(MadeError):
    """A data set is missing, malformed or does not fit the model."""


class ImpossibleValue(DataError):
    """A well-formed cell the model gives no probability: a number outside its column's bounds, a
    level the column does not have, absent where the column never is. `made score --impossible inf`
    scores such a row -inf instead of stopping at it."""


class ConfigError(MadeError):
    """A model or training configuration that cannot be built."""


class CheckpointError(MadeError):
    """A run directory or checkpoint that cannot be used."""


class ModelStoreError(MadeError):
    """A model store entry that is missing, incomplete or altered."""


class ModelNotFound(ModelStoreError):
    """No model of that name in the store."""


class InvalidInput(MadeError):
    """A request or argument that the model cannot accept (wrong width, unknown mask, ...).
    `loc` names the request field it is about, as validation errors do (("x",), ("mask",))."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.loc = loc


class NotReady(MadeError):
    """The models are not loaded (yet, or loading failed)."""


class RequestTimeout(MadeError):
    """A request ran past its time limit (the service's MADE_REQUEST_TIMEOUT)."""


class Overloaded(MadeError):
    """An endpoint holds as many requests as it may queue (MADE_MAX_QUEUE): retry after
    `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAcceptable(MadeError):
    """The representation asked for (e.g. a PNG of samples) is not one this model can give."""


def format_value(value: float) -> str:
    """A number as a person writes it in a message: 2, not np.float64(2.0); 0.5; nan; 1e+300,
    not its 301 digits (a whole number past 1e16, where a float's digits are noise)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else f"{value:g}"
