"""Errors the tool-server maps to HTTP answers: bad input → 4xx, upstream trouble → 502/504.

Each carries a stable ``code`` (machine-readable) and a message that says what to change; the app
renders them as ``{"error": {"code", "message"}}`` (docs/design.md §5).
"""

from __future__ import annotations


class ToolServerError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class BadRequest(ToolServerError):
    """The client sent something we cannot use (bad base64, not an image, bad region, too big)."""

    status = 400
    code = "bad_request"


class UpstreamError(ToolServerError):
    """A web backend or the summariser answered with an error."""

    status = 502
    code = "upstream_error"


class UpstreamTimeout(ToolServerError):
    """A web backend or the summariser did not answer in time."""

    status = 504
    code = "upstream_timeout"
