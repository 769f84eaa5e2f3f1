"""Errors raised while serving a request, and their HTTP status codes.

Called by `rest` (which turns any `WorkerError` into `{"error": message}` with
`http_status(exc)`) and raised by `registry`, `tensors`, `examples`, `runtime`.
The mapping from error class to status code lives only here, and follows
TensorFlow Serving's REST mapping of canonical status codes.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error a request can produce; `str(exc)` is the client message."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(WorkerError):
    """Malformed JSON, missing keys, wrong input names, bad shapes or dtypes."""

    code = "INVALID_ARGUMENT"


class ModelNotFound(WorkerError):
    """Unknown model, version or label, or no version could be loaded."""

    code = "NOT_FOUND"


class NotReady(WorkerError):
    """The requested version exists but is still loading."""

    code = "UNAVAILABLE"


class Unimplemented(WorkerError):
    """A feature TF Serving has that this worker does not."""

    code = "UNIMPLEMENTED"


class InferenceFailed(WorkerError):
    """TensorFlow raised something other than InvalidArgument while running a model."""

    code = "INTERNAL"


_STATUS_BY_CODE = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
    "UNKNOWN": 500,
}


def http_status(exc: WorkerError) -> int:
    """The HTTP status TF Serving uses for this error's canonical code (500 if unknown)."""
    return _STATUS_BY_CODE.get(exc.code, 500)
