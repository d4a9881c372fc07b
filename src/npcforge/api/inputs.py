"""Strict request input: path ids, query strings and the optional JSON body, each or a 400/413."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from npcforge.api.dto import MAX_BODY_BYTES, GenerateBody
from npcforge.api.errors import ApiError

M = TypeVar("M", bound=BaseModel)

_EMPTY_BODY = GenerateBody()


def _field_errors(errors: list[ErrorDetails], *, uuid_fields: bool = False) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for err in errors:
        name = ".".join(str(part) for part in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            message = "unknown field" if name != "(root)" else err["msg"]
        elif uuid_fields and err["type"] == "string_pattern_mismatch":
            message = "must be a UUID"
        else:
            message = err["msg"]
        found.setdefault(name, []).append(message)
    return found


def parse_path(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate(request.path_params)
    except ValidationError as exc:
        raise ApiError(
            400, "INVALID_PATH_PARAMETERS", "Path parameters are invalid.",
            details={"fieldErrors": _field_errors(exc.errors(), uuid_fields=True)},
        ) from None  # fmt: skip


def path_ids(request: Request, model: type[BaseModel]) -> tuple[UUID, ...]:
    """The path's ids as UUIDs, in the order of `model`'s fields (all UUID text), or its 400."""
    parsed = parse_path(request, model)
    return tuple(UUID(getattr(parsed, name)) for name in model.model_fields)


_NO_QUERY: dict[type[BaseModel], BaseModel] = {}


def parse_query(request: Request, model: type[M]) -> M:
    if not request.scope.get("query_string"):
        # Most requests carry no query string: validate a model's defaults once, not per request.
        parsed = _NO_QUERY.get(model)
        if parsed is None:
            parsed = _NO_QUERY[model] = model.model_validate({})
        assert isinstance(parsed, model)
        return parsed
    items = request.query_params.multi_items()
    values: dict[str, Any] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in items:
        if name in values:
            repeated[name] = ["may be given only once"]
        values[name] = value
    try:
        parsed = model.model_validate(values)
    except ValidationError as exc:
        raise ApiError(
            400, "INVALID_QUERY_PARAMETERS", "Query parameters are invalid.",
            details={"fieldErrors": {**_field_errors(exc.errors()), **repeated}},
        ) from None  # fmt: skip
    if repeated:
        raise ApiError(
            400, "INVALID_QUERY_PARAMETERS", "Query parameters are invalid.",
            details={"fieldErrors": repeated},
        )  # fmt: skip
    return parsed


def _too_large() -> ApiError:
    return ApiError(
        413, "PAYLOAD_TOO_LARGE", f"Request body is larger than {MAX_BODY_BYTES} bytes."
    )


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing more than `limit` bytes whether or not Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid_body(details: dict[str, Any]) -> ApiError:
    return ApiError(400, "INVALID_BODY", "Request body is invalid.", details=details)


async def parse_generate_body(request: Request) -> GenerateBody:
    """The optional body of POST …/generate; no body at all means the defaults."""
    raw = await read_body(request)
    if not raw.strip():
        return _EMPTY_BODY
    try:
        return GenerateBody.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        kinds = {err["type"] for err in errors}
        if "json_invalid" in kinds:
            raise _invalid_body({"message": "Request body must be valid JSON."}) from None
        if "model_type" in kinds:
            raise _invalid_body({"message": "Request body must be a JSON object."}) from None
        raise _invalid_body({"fieldErrors": _field_errors(errors)}) from None
