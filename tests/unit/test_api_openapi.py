"""The OpenAPI document matches the router and names every error the handlers can raise."""

from __future__ import annotations

import ast
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import npcforge.api as api_package
from npcforge.api.app import build_routes, create_app
from npcforge.api.auth import NoAuth
from npcforge.api.dto import CURSOR_PATTERN
from npcforge.api.errors import ApiError
from npcforge.api.openapi import build_openapi, error_codes
from npcforge.api.routes import ENDPOINTS, decode_cursor, encode_cursor
from npcforge.config import Settings
from npcforge.errors import ERROR_CODES
from npcforge.storage.filesystem import FilesystemStorage

# Answered by the app itself for requests no endpoint takes, not by an operation.
APP_LEVEL_CODES = {"NOT_FOUND", "METHOD_NOT_ALLOWED", "HTTP_ERROR"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_openapi(ENDPOINTS, requires_token=True)


def all_codes(document: dict[str, Any]) -> set[str]:
    codes: set[str] = set()
    for name, schema in document["components"]["schemas"].items():
        if name.endswith("Detail"):
            codes.update(schema["properties"]["code"]["enum"])
    return codes


def raised_codes() -> set[str]:
    """Every literal code passed to ApiError(...) in the api package."""
    codes: set[str] = set()
    for path in Path(api_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ApiError"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                codes.add(node.args[1].value)
    return codes


def test_every_route_is_documented_and_nothing_else(document):
    served = {(method, route.path) for route in build_routes() for method in route.methods or ()}
    served -= {(method, path) for method, path in served if method == "HEAD"}
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert served == documented
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_raised_error_code_is_documented(document):
    documented = all_codes(document)
    assert raised_codes() - APP_LEVEL_CODES <= documented
    assert {"UNAUTHORIZED", "RATE_LIMITED", "PAYLOAD_TOO_LARGE", "XML_NOT_FOUND"} <= documented
    assert "BUDGET_EXCEEDED" in documented


def test_job_error_codes_are_documented(document):
    code = document["components"]["schemas"]["JobErrorOut"]["properties"]["code"]
    assert all(name in code["description"] for name in ERROR_CODES)
    assert "RECORD_INVALID" in code["description"]


def test_each_response_lists_the_codes_of_its_status(document):
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        for status, codes in error_codes(endpoint, requires_token=True).items():
            response = operation["responses"][str(status)]
            ref = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            detail = document["components"]["schemas"][f"{ref}Detail"]
            assert detail["properties"]["code"]["enum"] == list(codes)
            assert response["headers"]["Cache-Control"]["required"] is True
            if status in (429, 503):
                assert "Retry-After" in response["headers"]
            if status == 401:
                assert "WWW-Authenticate" in response["headers"]


def test_refs_resolve_and_query_parameters_never_offer_null(document):
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"]
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                assert "null" not in json.dumps(parameter["schema"])
                if parameter["in"] == "path":
                    assert parameter["schema"]["format"] == "uuid"


def test_security_follows_the_authenticator(tmp_path):
    storage = FilesystemStorage(tmp_path, "b")
    secured = create_app(
        Settings(NPCFORGE_AUTH="jwt", SUPABASE_JWT_SECRET="x" * 40), storage=storage
    ).state.openapi
    open_doc = create_app(
        Settings(NPCFORGE_AUTH="none"), storage=storage, authenticator=NoAuth()
    ).state.openapi
    start = "/api/npcs/{npcId}/generate"
    assert secured["paths"][start]["post"]["security"] == [
        {"bearerAuth": []}, {"supabaseSession": []},
    ]  # fmt: skip
    assert "401" in secured["paths"][start]["post"]["responses"]
    assert "403" in secured["paths"][start]["post"]["responses"]  # cookie writes: Origin
    assert "403" not in secured["paths"]["/api/npcs/{npcId}/generation-jobs"]["get"]["responses"]
    assert secured["paths"]["/healthz"]["get"]["security"] == []
    assert open_doc["paths"][start]["post"]["security"] == []
    assert "401" not in open_doc["paths"][start]["post"]["responses"]
    assert "403" not in open_doc["paths"][start]["post"]["responses"]


def test_schemathesis_accepts_the_document(document):
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ENDPOINTS)


def test_cursor_round_trip_and_garbage():
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    job = uuid.uuid4()
    cursor = encode_cursor(stamp, job)
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert decode_cursor(cursor) == (stamp, job)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert decode_cursor(encode_cursor(epoch, job)) == (epoch, job)
    for bad in ("bm90LWEtY3Vyc29y", "A", "99999999999999999999-" + "0" * 32):
        with pytest.raises(ApiError) as refused:
            decode_cursor(bad)
        assert refused.value.code == "INVALID_QUERY_PARAMETERS"


def test_the_poll_documents_the_hold_reason(document):
    schemas = document["components"]["schemas"]
    holding = [
        name for name, schema in schemas.items() if "holdReason" in schema.get("properties", {})
    ]
    assert "JobStatusOut" in holding  # the poll's answer
    assert all(
        "budget" in json.dumps(schemas[name]["properties"]["holdReason"]) for name in holding
    )
