"""OpenAPI 3.1 for the API, generated from the endpoint table and the pydantic models.

Every operation is described by the same `Endpoint` entry the router is built from: its path,
query and body models (the ones the handler validates with), its success reply and the error
codes it answers. Errors every endpoint of a kind shares (401 when a token is required, 400 for
bad ids or query strings, 413 for large bodies, 500) are added here, once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from npcforge import __version__
from npcforge.api.dto import ErrorDetail, ErrorEnvelope

Handler = Callable[[Request], Awaitable[Response]]
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """A success answer: its status, JSON model (or another media type) and description."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON
    links: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    reply: Reply
    description: str = ""
    tag: str = "jobs"
    authenticated: bool = True
    # Queries PostgreSQL: an outage answers 503 DATABASE_UNAVAILABLE.
    uses_database: bool = True
    path_model: type[BaseModel] | None = None
    query_model: type[BaseModel] | None = None
    body_model: type[BaseModel] | None = None
    # Status → error codes this endpoint itself answers (shared ones are added by the builder).
    errors: dict[int, tuple[str, ...]] = field(default_factory=dict)


_ERROR_TEXT = {
    400: "The request's input is invalid.",
    401: "No access token, or one that is invalid or expired.",
    403: "The session cookie came from a page of an origin that may not use the API.",
    404: "Not found. Foreign and soft-deleted NPCs are not found either.",
    409: "A generation job is already queued or processing.",
    413: "The request body is larger than 256 KiB.",
    429: "Too many job starts; retry after `Retry-After` seconds.",
    500: "An unexpected server error.",
    502: "An outside service refused the request; retrying will not help until it is fixed.",
    503: "Temporarily unavailable; retry after `Retry-After` seconds.",
}

_HEADER_TEXT = {
    "Cache-Control": "Always `no-store`.",
    "Retry-After": "Seconds to wait before retrying.",
    "WWW-Authenticate": 'A `Bearer` challenge, with `error="invalid_token"` when a token was sent.',
}


def error_codes(endpoint: Endpoint, *, requires_token: bool) -> dict[int, tuple[str, ...]]:
    """All error codes the endpoint can answer, by status."""
    codes: dict[int, list[str]] = {}

    def add(status: int, *names: str) -> None:
        bucket = codes.setdefault(status, [])
        bucket.extend(name for name in names if name not in bucket)

    if endpoint.authenticated and requires_token:
        add(401, "UNAUTHORIZED")
        if endpoint.method not in ("GET", "HEAD"):
            add(403, "ORIGIN_NOT_ALLOWED")  # cookie-authenticated writes only
        add(503, "AUTH_UNAVAILABLE")
    if endpoint.path_model is not None:
        add(400, "INVALID_PATH_PARAMETERS")
    if endpoint.query_model is not None:
        add(400, "INVALID_QUERY_PARAMETERS")
    if endpoint.body_model is not None:
        add(400, "INVALID_BODY")
        add(413, "PAYLOAD_TOO_LARGE")
    for status, names in endpoint.errors.items():
        add(status, *names)
    if endpoint.uses_database:
        add(503, "DATABASE_UNAVAILABLE")
    add(500, "INTERNAL_SERVER_ERROR")
    return {status: tuple(names) for status, names in sorted(codes.items())}


def _error_model(name: str, codes: tuple[str, ...]) -> type[BaseModel]:
    """An envelope whose `code` is one of `codes` (a subclass, so it stays an ErrorEnvelope)."""
    detail: type[BaseModel] = create_model(
        f"{name}Detail",
        __base__=ErrorDetail,
        code=(str, Field(json_schema_extra={"enum": list(codes)})),
    )
    model: type[BaseModel] = create_model(name, __base__=ErrorEnvelope, error=(detail, ...))
    return model


def _pascal(operation_id: str) -> str:
    return operation_id[:1].upper() + operation_id[1:]


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    # A query parameter is either absent or text: `null` cannot be sent, so it is not offered.
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [option for option in options if option != {"type": "null"}]
        if len(rest) == 1:
            merged = {key: value for key, value in schema.items() if key != "anyOf"}
            merged.update(rest[0])
            if merged.get("default", 0) is None:
                del merged["default"]
            return merged
    return schema


def _parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    params = []
    for name, raw in schema.get("properties", {}).items():
        prop = _without_null(dict(raw))
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _headers(names: Iterable[str]) -> dict[str, Any]:
    return {
        name: {"description": _HEADER_TEXT[name], "required": True, "schema": {"type": "string"}}
        for name in names
    }


def build_openapi(
    endpoints: Iterable[Endpoint], *, requires_token: bool, title: str = "npcforge API"
) -> dict[str, Any]:
    endpoints = list(endpoints)
    models: dict[tuple[type[BaseModel], str], type[BaseModel]] = {}
    operations: list[tuple[Endpoint, dict[int, tuple[str, ...]], dict[int, type[BaseModel]]]] = []
    for endpoint in endpoints:
        codes = error_codes(endpoint, requires_token=requires_token)
        envelopes = {
            status: _error_model(f"{_pascal(endpoint.operation_id)}Error{status}", names)
            for status, names in codes.items()
        }
        operations.append((endpoint, codes, envelopes))
        for envelope in envelopes.values():
            models[(envelope, "serialization")] = envelope
        if endpoint.reply.model is not None:
            models[(endpoint.reply.model, "serialization")] = endpoint.reply.model
        if endpoint.body_model is not None:
            models[(endpoint.body_model, "validation")] = endpoint.body_model

    keys = list(models)
    refs, defs = models_json_schema(
        [(model, mode) for model, mode in keys],  # type: ignore[misc]
        ref_template=REF_TEMPLATE,
    )

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for endpoint, codes, envelopes in operations:
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "tags": [endpoint.tag],
        }
        if endpoint.description:
            operation["description"] = endpoint.description
        parameters: list[dict[str, Any]] = []
        if endpoint.path_model is not None:
            parameters += _parameters(endpoint.path_model, "path")
        if endpoint.query_model is not None:
            parameters += _parameters(endpoint.query_model, "query")
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body_model is not None:
            operation["requestBody"] = {
                "required": False,
                "description": endpoint.body_model.__doc__ or "",
                "content": {JSON: {"schema": ref(endpoint.body_model, "validation")}},
            }
        reply = endpoint.reply
        success: dict[str, Any] = {
            "description": reply.description,
            "headers": _headers(["Cache-Control"]),
            "content": {
                reply.media_type: {
                    "schema": ref(reply.model, "serialization")
                    if reply.model is not None
                    else {"type": "string" if reply.media_type.startswith("text/") else "object"}
                }
            },
        }
        if reply.links:
            success["links"] = reply.links
        responses: dict[str, Any] = {str(reply.status): success}
        for status, names in codes.items():
            header_names = ["Cache-Control"]
            if status == 401:
                header_names.append("WWW-Authenticate")
            if status in (429, 503):
                header_names.append("Retry-After")
            responses[str(status)] = {
                "description": f"{_ERROR_TEXT[status]} Codes: {', '.join(names)}.",
                "headers": _headers(header_names),
                "content": {JSON: {"schema": ref(envelopes[status], "serialization")}},
            }
        operation["responses"] = responses
        if endpoint.authenticated and requires_token:
            operation["security"] = [{"bearerAuth": []}, {"supabaseSession": []}]
        else:
            operation["security"] = []
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "Start NPC XML generation jobs and poll them. Every error is "
            '`{"error": {"code", "message", "details"?}}` with `Cache-Control: no-store`.',
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if requires_token:
        document["components"]["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A Supabase Auth access token (the session's `access_token`).",
            },
            "supabaseSession": {
                "type": "apiKey",
                "in": "cookie",
                "name": "sb-PROJECT_REF-auth-token",
                "description": "The session cookie of Supabase's SSR helpers (`base64-` JSON, "
                "possibly split into `.0`, `.1`, …), for pages served from an allowed origin. "
                "Requests that change state must carry an allowed `Origin`.",
            },
        }
    return document
