"""Errors a route raises to answer with a status other than a field problem (routes.error_response maps them)."""
from __future__ import annotations


class ApiError(Exception):
    """Answered as `{"error": error, "detail": message, "errors": [...]}` with `status_code`."""

    def __init__(self, status_code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error


def not_implemented(message: str) -> ApiError:
    return ApiError(501, "NotImplemented", message)


def not_available(message: str) -> ApiError:
    return ApiError(503, "ServiceUnavailable", message)
