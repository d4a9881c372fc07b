"""The API's error envelope: {"error": {"code", "message", "details"?}} with no-store caching."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

NO_STORE = {"Cache-Control": "no-store"}


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


def error_response(error: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details is not None:
        body["details"] = error.details
    return JSONResponse({"error": body}, status_code=error.status, headers={**NO_STORE, **error.headers})


def npc_not_found() -> ApiError:
    return ApiError(404, "NPC_NOT_FOUND", "NPC could not be found.")
