"""The one error type of the MONAI Label app: a request that cannot be served, with its HTTP status."""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["RequestError"]


class RequestError(HTTPException):
    """A request that cannot be served, answered with ``status_code`` and ``{"detail": message}``.

    MONAI Label's endpoints let an ``HTTPException`` through to FastAPI, so the client gets this status
    instead of a bare 500. 400: malformed parameters (region, threshold, tiles); 404: image id not in the
    datastore, or file not found; 422: the image file cannot be decoded; 503: no trained model yet.
    """

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code=status_code, detail=message)

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"
