"""The API's error envelope: {"error": {"code", "message", "details"?}} with no-store caching."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

# Sent on every API response: job state changes, so nothing may be cached along the way.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_body(error: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    return {"error": body}


def error_response(error: ApiError) -> Response:
    content = json.dumps(error_body(error), ensure_ascii=False, separators=(",", ":"))
    return Response(
        content.encode("utf-8"),
        status_code=error.status,
        media_type="application/json",
        headers={**NO_STORE, **error.headers},
    )


def npc_not_found() -> ApiError:
    return ApiError(404, "NPC_NOT_FOUND", "NPC could not be found.")
