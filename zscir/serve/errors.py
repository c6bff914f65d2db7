"""The one error a request can cause: an HTTP status, the field at fault and what was expected."""

from __future__ import annotations


class RequestError(Exception):
    """Bad input from a request: an HTTP status, the field at fault and what was expected."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def to_dict(self) -> dict:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}
