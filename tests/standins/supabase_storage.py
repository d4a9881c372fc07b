"""A Supabase Storage stand-in that speaks the wire protocol storage3 2.x uses.

Routes, status codes and error bodies follow reference/protocols.md §B.2 (the storage server's
`src/http/routes/**` and `src/internal/errors/codes.ts`): storage errors are HTTP 400 with the
real status as a string in `statusCode`, except 429 SlowDown and 500 InternalError. Where the real
server (supabase/storage v1.70.6 behind a /storage/v1 proxy, protocols.md §B.3.1) was seen to
answer otherwise, the stand-in answers as it did:
- keys are HS256 JWTs checked against the project's JWT secret, and their `role` decides, the way
  row-level security does: `service_role` sees everything; any other role (the anon key) finds no
  bucket (NoSuchBucket), no object (NoSuchKey), and may write nothing ("new row violates
  row-level security policy"); an expired key fails with `"exp" claim timestamp check failed`;
- the stored content type is the upload's base type (`application/xml; charset=utf-8` is stored
  as `application/xml`);
- JSON answers are `application/json; charset=utf-8`; bucket JSON has no `type`;
- an unknown route answers 404 with a NUMERIC `statusCode` and no `code`.
Only the routes npcforge needs are implemented; the rest answer like an unknown route.

Tests run it on a real loopback port with uvicorn so the real storage3/httpx stack is exercised:

    async with running_storage_standin(buckets=["npc-xml-files"]) as standin:
        storage = SupabaseStorage(standin.url, SERVICE_ROLE_KEY, "npc-xml-files")
        standin.fail_next("slowdown", 2, retry_after="3")
        ...
        standin.objects[("npc-xml-files", "x.xml")].content_type

Faults (`fail_next`) apply to the next N requests of any route, in order: `internal` answers 500
InternalError, `slowdown` answers 429 SlowDown (optionally with Retry-After), `slow` waits
`delay` seconds and then answers normally, `drop` closes the socket without any response,
`gateway` answers 502 the way the gateway in front does while the server is down. `outage`
answers every request with the gateway's 502 until it is set back to False.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import hashlib
import hmac
import json
import re
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

PREFIX = "/storage/v1"
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
# The project's JWT secret (the server's AUTH_JWT_SECRET) and the two API keys signed with it.
JWT_SECRET = "standin-jwt-secret-with-at-least-32-characters"
SERVICE_ROLE = "service_role"
RLS_VIOLATION = "new row violates row-level security policy"
JSON_TYPE = "application/json; charset=utf-8"
# The storage server's allowed object-name characters (src/storage/limits.ts).
_VALID_KEY = re.compile(r"^[A-Za-z0-9_/!.*'() &$=@;:+,?-]*$")
# First path segments under /object that belong to routes this stand-in does not implement.
_RESERVED_OBJECT_SEGMENTS = frozenset(
    {"sign", "list", "info", "move", "copy", "upload", "public", "list-v2"}
)

FaultKind = Literal["internal", "slowdown", "slow", "drop", "gateway"]


def mint_key(
    role: str, *, secret: str = JWT_SECRET, expires_in: float = 10 * 365 * 86400, **claims: Any
) -> str:
    """An API key as Supabase issues them: an HS256 JWT with `role`, `iss`, `iat` and `exp`."""
    now = int(datetime.now(UTC).timestamp())
    payload = {"iss": "supabase", "role": role, "iat": now, "exp": now + int(expires_in), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


SERVICE_ROLE_KEY = mint_key(SERVICE_ROLE)
ANON_KEY = mint_key("anon")
# Another project's service_role key: the right role, signed with a secret this one does not know.
FOREIGN_SERVICE_KEY = mint_key(SERVICE_ROLE, secret="another-projects-jwt-secret-of-32-chars")


class StorageJSON(JSONResponse):
    """The storage server's JSON (Fastify names the charset)."""

    media_type = JSON_TYPE


# --- error bodies (protocols.md §B.2) ---------------------------------------------------------


def storage_error(code: str, message: str | None = None) -> JSONResponse:
    """The storage server's error response for `code`, with its exact HTTP status and body."""
    http_status, status_code, error, default_message = _ERRORS[code]
    body = {
        "statusCode": status_code,
        "code": code,
        "error": error,
        "message": message if message is not None else default_message,
    }
    return StorageJSON(body, status_code=http_status)


_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "NoSuchKey": (400, "404", "not_found", "Object not found"),
    "NoSuchBucket": (400, "404", "Bucket not found", "Bucket not found"),
    "KeyAlreadyExists": (400, "409", "Duplicate", "The resource already exists"),
    "BucketAlreadyExists": (400, "409", "Duplicate", "The resource already exists"),
    "AccessDenied": (400, "403", "Unauthorized", "signature verification failed"),
    "InvalidKey": (400, "400", "InvalidKey", "Invalid key"),
    "EntityTooLarge": (
        400,
        "413",
        "Payload too large",
        "The object exceeded the maximum allowed size",
    ),
    "InvalidMimeType": (400, "415", "invalid_mime_type", "mime type is not supported"),
    "InvalidRequest": (400, "400", "Bad Request", "Invalid request"),
    "SlowDown": (
        429,
        "429",
        "too_many_connections",
        "Too many connections issued to the database",
    ),
    "InternalError": (500, "500", "Internal", "Internal Server Error"),
}


def _route_not_found(method: str, path: str) -> JSONResponse:
    # Fastify's own not-found answer: a numeric statusCode and no storage `code` (seen on v1.70.6).
    body = {"statusCode": 404, "error": "Not Found", "message": f"Route {method}:{path} not found"}
    return StorageJSON(body, status_code=404)


def _gateway_down() -> Response:
    """What the gateway in front answers while the storage server is down."""
    body = {"message": "An invalid response was received from the upstream server"}
    return StorageJSON(body, status_code=502)


# --- state ------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    cache_control: str
    metadata: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.data, usedforsecurity=False).hexdigest() + '"'


@dataclass
class StandInBucket:
    id: str
    name: str
    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: list[str] | None = None
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": "",
            "public": self.public,
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": self.allowed_mime_types,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    delay: float = 0.0
    retry_after: str | None = None


def _mime_allowed(mimetype: str, allowed: Iterable[str]) -> bool:
    base = mimetype.split(";", 1)[0].strip().lower()
    for entry in allowed:
        pattern = entry.strip().lower()
        if pattern == base or (pattern.endswith("/*") and base.startswith(pattern[:-1])):
            return True
    return False


def _parse_metadata(raw: str | None, *, maybe_base64: bool = False) -> dict[str, Any] | None:
    if not raw:
        return None
    candidates = [raw]
    if maybe_base64:
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            candidates.append(base64.b64decode(raw, validate=True).decode())
    for text in candidates:
        with contextlib.suppress(ValueError):
            value = json.loads(text)
            if isinstance(value, dict):
                return value
    return None


class SupabaseStorageStandIn:
    """The stand-in's state and its ASGI app; `url` is set while running_storage_standin runs."""

    def __init__(
        self,
        *,
        jwt_secret: str = JWT_SECRET,
        api_keys: dict[str, str] | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.jwt_secret = jwt_secret
        # Opaque keys (sb_secret_…, sb_publishable_…) the gateway turns into a role.
        self.api_keys = dict(api_keys or {})
        self.max_upload_bytes = max_upload_bytes
        # While True, every request gets the gateway's 502 (the server is down).
        self.outage = False
        self.url = ""
        self.buckets: dict[str, StandInBucket] = {}
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._closing = asyncio.Event()
        self._app = self._build_app()

    # --- test controls ------------------------------------------------------------------------

    def add_bucket(
        self,
        bucket_id: str,
        *,
        public: bool = False,
        file_size_limit: int | None = None,
        allowed_mime_types: list[str] | None = None,
    ) -> StandInBucket:
        bucket = StandInBucket(bucket_id, bucket_id, public, file_size_limit, allowed_mime_types)
        self.buckets[bucket_id] = bucket
        return bucket

    def fail_next(
        self,
        kind: FaultKind,
        count: int = 1,
        *,
        delay: float = 5.0,
        retry_after: str | None = None,
    ) -> None:
        """Make the next `count` requests fail as `kind` (`delay` is for `slow`)."""
        for _ in range(count):
            self._faults.append(Fault(kind, delay=delay, retry_after=retry_after))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    def object(self, bucket: str, key: str) -> StoredObject | None:
        return self.objects.get((bucket, key))

    # --- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(RecordedRequest(scope["method"], scope["path"], headers))
        fault = self._faults.popleft() if self._faults else None
        if self.outage or (fault is not None and fault.kind == "gateway"):
            await _gateway_down()(scope, receive, send)
        elif fault is None:
            await self._app(scope, receive, send)
        elif fault.kind == "internal":
            await storage_error("InternalError")(scope, receive, send)
        elif fault.kind == "slowdown":
            response = storage_error("SlowDown")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            await response(scope, receive, send)
        elif fault.kind == "slow":
            # Stopping the stand-in cuts the wait short so shutdown never hangs on a fault.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
            # By now the client has usually given up; that is the point of the fault.
            with contextlib.suppress(ClientDisconnect):
                await self._app(scope, receive, send)
        else:
            await _drop_connection(receive, send)

    def _build_app(self) -> Starlette:
        object_path = PREFIX + "/object/{bucket}/{key:path}"
        routes = [
            Route(
                PREFIX + "/object/authenticated/{bucket}/{key:path}",
                self._download_authenticated,
                methods=["GET"],
            ),
            Route(object_path, self._download, methods=["GET"]),
            Route(object_path, self._upload, methods=["POST", "PUT"]),
            Route(PREFIX + "/object/{bucket}", self._remove, methods=["DELETE"]),
            Route(PREFIX + "/bucket", self._create_bucket, methods=["POST"]),
            Route(PREFIX + "/bucket/{bucket}", self._get_bucket, methods=["GET"]),
        ]

        async def unknown_route(request: Request, exc: Exception) -> Response:
            return _route_not_found(request.method, request.url.path)

        return Starlette(routes=routes, exception_handlers={404: unknown_route, 405: unknown_route})

    # --- auth ---------------------------------------------------------------------------------

    def _role(self, request: Request) -> str | JSONResponse:
        """The caller's role, or the AccessDenied answer for a key that is not valid."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        for key, role in self.api_keys.items():
            if hmac.compare_digest(token.encode(), key.encode()):
                return role
        if scheme.lower() != "bearer" or token.count(".") != 2:
            # The server reports jose's verdict; a non-JWT string fails before signature checks.
            return storage_error("AccessDenied", "Invalid Compact JWS")
        try:
            claims = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.ExpiredSignatureError:
            return storage_error("AccessDenied", '"exp" claim timestamp check failed')
        except jwt.PyJWTError:
            return storage_error("AccessDenied", "signature verification failed")
        role = claims.get("role")
        return role if isinstance(role, str) and role else "anon"

    # --- handlers -----------------------------------------------------------------------------

    async def _upload(self, request: Request) -> Response:
        bucket_id = request.path_params["bucket"]
        key = request.path_params["key"]
        if bucket_id in _RESERVED_OBJECT_SEGMENTS:
            raise HTTPException(404)
        role = self._role(request)
        if isinstance(role, Response):
            return role
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            return storage_error("NoSuchBucket")
        if role != SERVICE_ROLE:  # no policy lets any other role insert into storage.objects
            return storage_error("AccessDenied", RLS_VIOLATION)
        if not key or not _VALID_KEY.fullmatch(key):
            return storage_error("InvalidKey", f"Invalid key: {key}")

        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            async with request.form() as form:
                part = form.get("file")
                if not isinstance(part, UploadFile):
                    return storage_error("InvalidRequest", "No file was uploaded")
                data = await part.read()
                field_type = form.get("contentType")
                mimetype = part.content_type or (field_type if isinstance(field_type, str) else "")
                cache = form.get("cacheControl")
                cache_control = (
                    f"max-age={cache}" if isinstance(cache, str) and cache else "no-cache"
                )
                raw_meta = form.get("metadata") or form.get("userMetadata")
                metadata = _parse_metadata(raw_meta if isinstance(raw_meta, str) else None)
        else:
            data = await request.body()
            mimetype = content_type
            cache_control = request.headers.get("cache-control", "no-cache")
            metadata = _parse_metadata(request.headers.get("x-metadata"), maybe_base64=True)
        # The server keeps the base type: "application/xml; charset=utf-8" is stored as
        # "application/xml" (seen on v1.70.6).
        mimetype = mimetype.split(";", 1)[0].strip() or "text/plain"

        limit = self.max_upload_bytes
        if bucket.file_size_limit is not None:
            limit = min(limit, bucket.file_size_limit)
        if len(data) > limit:
            return storage_error("EntityTooLarge")
        if bucket.allowed_mime_types and not _mime_allowed(mimetype, bucket.allowed_mime_types):
            return storage_error("InvalidMimeType", f"mime type {mimetype} is not supported")

        upsert = request.method == "PUT" or request.headers.get("x-upsert") == "true"
        existing = self.objects.get((bucket_id, key))
        if existing is not None and not upsert:
            return storage_error("KeyAlreadyExists")
        stored = StoredObject(data, mimetype, cache_control, metadata)
        if existing is not None:
            stored.id, stored.created_at = existing.id, existing.created_at
        self.objects[(bucket_id, key)] = stored
        return StorageJSON({"Id": stored.id, "Key": f"{bucket_id}/{key}"})

    async def _download(self, request: Request) -> Response:
        if request.path_params["bucket"] in _RESERVED_OBJECT_SEGMENTS:
            raise HTTPException(404)
        return self._serve_object(request, authenticated_route=False)

    async def _download_authenticated(self, request: Request) -> Response:
        return self._serve_object(request, authenticated_route=True)

    def _serve_object(self, request: Request, *, authenticated_route: bool) -> Response:
        bucket_id = request.path_params["bucket"]
        key = request.path_params["key"]
        role = self._role(request)
        if authenticated_route and isinstance(role, Response):
            return role
        bucket = self.buckets.get(bucket_id)
        # The plain download route tolerates a bad JWT, but then a private bucket is invisible.
        if bucket is None or (isinstance(role, Response) and not bucket.public):
            return storage_error("NoSuchBucket")
        stored = self.objects.get((bucket_id, key))
        # Row-level security hides every object from a role without a policy: "not found".
        if stored is None or (isinstance(role, str) and role != SERVICE_ROLE):
            return storage_error("NoSuchKey")
        headers = {
            "Content-Type": stored.content_type,
            "Cache-Control": stored.cache_control,
            "ETag": stored.etag,
            "Last-Modified": email.utils.format_datetime(stored.updated_at, usegmt=True),
            "Accept-Ranges": "bytes",
            "X-Robots-Tag": "none",
        }
        return Response(stored.data, headers=headers)

    async def _remove(self, request: Request) -> Response:
        bucket_id = request.path_params["bucket"]
        role = self._role(request)
        if isinstance(role, Response):
            return role
        if bucket_id not in self.buckets:
            return storage_error("NoSuchBucket")
        try:
            body = await request.json()
        except ValueError:
            return storage_error("InvalidRequest", "body must be JSON")
        prefixes = body.get("prefixes") if isinstance(body, dict) else None
        if not isinstance(prefixes, list) or not prefixes:
            return storage_error("InvalidRequest", "body/prefixes must NOT have fewer than 1 items")
        removed = []
        for name in prefixes if role == SERVICE_ROLE else []:  # others see no rows to delete
            stored = self.objects.pop((bucket_id, str(name)), None)
            if stored is not None:
                removed.append(self._object_row(bucket_id, str(name), stored))
        return StorageJSON(removed)

    async def _create_bucket(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        if role != SERVICE_ROLE:
            return storage_error("AccessDenied", RLS_VIOLATION)
        try:
            body = await request.json()
        except ValueError:
            return storage_error("InvalidRequest", "body must be JSON")
        if not isinstance(body, dict):
            return storage_error("InvalidRequest", "body must be an object")
        bucket_id = body.get("id") or body.get("name")
        if not isinstance(bucket_id, str) or not bucket_id:
            return storage_error("InvalidRequest", "body must have required property 'name'")
        if bucket_id in self.buckets:
            return storage_error("BucketAlreadyExists")
        given_name = body.get("name")
        name = given_name if isinstance(given_name, str) and given_name else bucket_id
        self.buckets[bucket_id] = StandInBucket(
            bucket_id,
            name,
            bool(body.get("public", False)),
            body.get("file_size_limit"),
            body.get("allowed_mime_types"),
        )
        return StorageJSON({"name": name})

    async def _get_bucket(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None or role != SERVICE_ROLE:  # row-level security hides the bucket
            return storage_error("NoSuchBucket")
        return StorageJSON(bucket.as_json())

    @staticmethod
    def _object_row(bucket_id: str, name: str, stored: StoredObject) -> dict[str, Any]:
        return {
            "bucket_id": bucket_id,
            "name": name,
            "id": stored.id,
            "owner": "",
            "created_at": stored.created_at.isoformat(),
            "updated_at": stored.updated_at.isoformat(),
            "last_accessed_at": stored.updated_at.isoformat(),
            "metadata": {
                "eTag": stored.etag,
                "size": len(stored.data),
                "mimetype": stored.content_type,
                "cacheControl": stored.cache_control,
                "lastModified": stored.updated_at.isoformat(),
                "contentLength": len(stored.data),
                "httpStatusCode": 200,
            },
        }

    def release_slow_requests(self) -> None:
        """Let every request held by a `slow` fault answer now (used when stopping)."""
        self._closing.set()


async def _drop_connection(receive: Receive, send: Send) -> None:
    """Close the client's socket without writing a single byte of response.

    ASGI has no verb for this; uvicorn's h11 server hands the app its request cycle's bound
    `send`, whose owner holds the asyncio transport.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.BaseTransport):
        raise RuntimeError("dropping a connection needs uvicorn's h11 server")
    transport.close()
    # Returning before uvicorn notices the close would make it try to send a 500.
    while (await receive())["type"] != "http.disconnect":
        pass


# --- running it -------------------------------------------------------------------------------


class _InProcessServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Leave the test runner's signal handlers alone.
        yield


@contextlib.asynccontextmanager
async def running_storage_standin(
    *,
    buckets: Iterable[str] = (),
    jwt_secret: str = JWT_SECRET,
    api_keys: dict[str, str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> AsyncIterator[SupabaseStorageStandIn]:
    """Serve a fresh stand-in on 127.0.0.1 (a free port) in this event loop.

    `standin.url` is the SUPABASE_URL to give a client; storage routes live under /storage/v1.
    Keys are JWTs signed with `jwt_secret` (SERVICE_ROLE_KEY, ANON_KEY, or `mint_key`), or
    the opaque keys in `api_keys` mapped to their role.
    """
    standin = SupabaseStorageStandIn(
        jwt_secret=jwt_secret, api_keys=api_keys, max_upload_bytes=max_upload_bytes
    )
    for bucket_id in buckets:
        standin.add_bucket(bucket_id)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        standin,
        interface="asgi3",
        http="h11",
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = _InProcessServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("storage stand-in stopped before it started")
            await asyncio.sleep(0.01)
        standin.url = f"http://127.0.0.1:{port}"
        yield standin
    finally:
        standin.release_slow_requests()
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=10)
        finally:
            sock.close()
