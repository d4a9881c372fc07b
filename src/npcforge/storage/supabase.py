"""Supabase Storage through the official `storage3` async client.

Wire facts this module relies on (reference/protocols.md §B):
- most storage errors arrive as HTTP 400 with the real status as a *string* in the body's
  `statusCode`, and storage3 raises `StorageApiError(message, body["error"], body["statusCode"])`
  chained to the httpx `HTTPStatusError`, whose response still carries the body's `code`
  (`NoSuchKey`, `NoSuchBucket`, `AccessDenied`, `SlowDown`, …) and any `Retry-After` header;
- network faults (connect errors, timeouts, dropped connections) come out as raw httpx errors.
`classify_storage_failure` is the one place that turns all of that into a `StorageError`.

Downloads are bounded: a response larger than `MAX_DOWNLOAD_BYTES` (twice the 262 144-byte cap
the XML validator enforces before anything is stored) is cut off while it streams in and reported
as a permanent `ObjectTooLarge` failure, so a wrong or hostile object cannot exhaust memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from npcforge.backoff import parse_retry_after
from npcforge.errors import StorageError
from npcforge.redaction import redact, scrub
from npcforge.storage.base import check_key, put_each

log = logging.getLogger(__name__)

# The real server keeps only the base type (it drops "; charset=utf-8"); the XML declaration
# names the encoding.
XML_CONTENT_TYPE = "application/xml"
MAX_DOWNLOAD_BYTES = 2 * 262_144
# Objects are overwritten on regeneration, so caches must not hold on to them for long.
DEFAULT_CACHE_CONTROL_SECONDS = 60
DEFAULT_TIMEOUT_SECONDS = 20.0
DEFAULT_MAX_CONNECTIONS = 32

_MESSAGE_LIMIT = 300
_CODE_LIMIT = 64

# storage3 reports the body's `error` field as `.code`; these map it back to the storage code
# when the response body is not reachable through the exception chain.
_ERROR_FIELD_TO_STORAGE_CODE = {
    "not_found": "NoSuchKey",
    "Not found": "NoSuchKey",
    "Bucket not found": "NoSuchBucket",
    "Unauthorized": "AccessDenied",
    "too_many_connections": "SlowDown",
    "Payload too large": "EntityTooLarge",
    "invalid_mime_type": "InvalidMimeType",
    "InvalidKey": "InvalidKey",
    "Internal": "InternalError",
}


class ObjectTooLarge(Exception):
    """A storage response body went past the download bound."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"storage response exceeds {limit} bytes")
        self.limit = limit


class _BoundedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in self._inner:
            received += len(chunk)
            if received > self._limit:
                raise ObjectTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _size_bound_hook(limit: int) -> Callable[[httpx.Response], Awaitable[None]]:
    async def bound_response(response: httpx.Response) -> None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ObjectTooLarge(limit)
        stream = response.stream
        if isinstance(stream, httpx.AsyncByteStream):
            response.stream = _BoundedStream(stream, limit)

    return bound_response


# --- classification ---------------------------------------------------------------------------


def _response_in_chain(exc: BaseException) -> httpx.Response | None:
    """The HTTP response behind a storage3 error (storage3 chains the httpx HTTPStatusError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.HTTPStatusError):
            return current.response
        current = current.__cause__ or current.__context__
    return None


def _body_code(response: httpx.Response | None) -> str | None:
    if response is None:
        return None
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) and code else None


def _status_number(status: object) -> int | None:
    try:
        return int(str(status))
    except ValueError:
        return None


def _api_failure(exc: StorageApiError, operation: str, secrets: Iterable[str]) -> StorageError:
    response = _response_in_chain(exc)
    secrets = tuple(secrets)
    code = _body_code(response) or _ERROR_FIELD_TO_STORAGE_CODE.get(str(exc.code), str(exc.code))
    # Both come from the server's body: kept short and without the key, like its message.
    code, status = scrub(code, secrets, _CODE_LIMIT), scrub(str(exc.status), secrets, _CODE_LIMIT)
    semantic = _status_number(exc.status)
    if semantic is None and response is not None:
        semantic = response.status_code
    if semantic in {401, 403} and code in {"", "InternalError"}:
        # The hosted gateway rejects bad keys with a body storage3 cannot read.
        code = "AccessDenied"
    retryable = code == "SlowDown" or semantic in {408, 429} or (semantic or 0) >= 500
    retry_after = parse_retry_after(response.headers.get("retry-after")) if response else None
    detail_text = scrub(str(exc.message), secrets, _MESSAGE_LIMIT)
    details: dict[str, Any] = {"storageCode": code, "status": status}
    if response is not None:
        details["httpStatus"] = response.status_code
    return StorageError(
        redact(f"storage {operation} failed: {code} ({status}): {detail_text}", secrets),
        details=details,
        retryable=retryable,
        retry_after=retry_after if retryable else None,
    )


def classify_storage_failure(
    exc: BaseException, *, operation: str = "request", secrets: Iterable[str] = ()
) -> StorageError:
    """Map anything a storage3 call raised to a StorageError with the right retry policy.

    Retryable: 429 / SlowDown, 408, any 5xx, timeouts, connection and protocol faults.
    Permanent: every other storage error (403 AccessDenied, 404 NoSuchBucket, 413, 415,
    InvalidKey, …) with the storage code in `details`. Strings in `secrets` never appear in the
    result, even when a server echoes them.
    """
    secrets = tuple(secrets)
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, StorageApiError):
        return _api_failure(exc, operation, secrets)
    if isinstance(exc, ObjectTooLarge):
        return StorageError(
            f"storage {operation} failed: object larger than {exc.limit} bytes",
            details={"storageCode": "ObjectTooLarge", "limitBytes": exc.limit},
            retryable=False,
        )
    if isinstance(exc, httpx.HTTPStatusError):
        # Not raised by storage3 2.x, which wraps it; classified the same way if it ever leaks.
        return _api_failure(
            StorageApiError(exc.response.reason_phrase, "", exc.response.status_code),
            operation,
            secrets,
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        code, retryable = "InvalidUrl", False
    elif isinstance(exc, httpx.TimeoutException):
        code, retryable = "Timeout", True
    elif isinstance(exc, httpx.TransportError | httpx.DecodingError):
        code, retryable = "ConnectionError", True
    elif isinstance(exc, httpx.HTTPError):
        code, retryable = "HttpError", False
    elif isinstance(exc, ValueError):
        # storage3 refuses dot segments in keys before sending anything.
        code, retryable = "InvalidKey", False
    else:
        code, retryable = "Unexpected", False
    reason = scrub(str(exc), secrets, _MESSAGE_LIMIT)
    summary = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return StorageError(
        redact(f"storage {operation} failed: {summary}", secrets),
        details={"storageCode": code, "error": type(exc).__name__},
        retryable=retryable,
    )


# --- the backend ------------------------------------------------------------------------------


def _storage_root(supabase_url: str) -> str:
    base = supabase_url.rstrip("/")
    if not base.endswith("/storage/v1"):
        base += "/storage/v1"
    return base + "/"


class SupabaseStorage:
    """The Storage port on Supabase Storage. One instance (one connection pool) per process."""

    name = "supabase"

    def __init__(
        self,
        supabase_url: str,
        service_key: str,
        bucket: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        cache_control_seconds: int = DEFAULT_CACHE_CONTROL_SECONDS,
    ) -> None:
        self.bucket = bucket
        self.url = _storage_root(supabase_url)
        self._secrets = (service_key,)
        self._cache_control = str(cache_control_seconds)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            # Identity encoding keeps the download bound a bound on decoded bytes too.
            headers={"Accept-Encoding": "identity"},
            # A redirect would carry the apiKey header elsewhere; report it instead.
            follow_redirects=False,
            event_hooks={"response": [_size_bound_hook(max_download_bytes)]},
        )
        self._client = AsyncStorageClient(
            self.url,
            {"apiKey": service_key, "Authorization": f"Bearer {service_key}"},
            http_client=self._http,
        )
        self._bucket_api = self._client.from_(bucket)

    def __repr__(self) -> str:
        return f"SupabaseStorage(url={self.url!r}, bucket={self.bucket!r})"

    def _failure(self, exc: BaseException, operation: str) -> StorageError:
        return classify_storage_failure(exc, operation=operation, secrets=self._secrets)

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        try:
            await self._bucket_api.upload(
                key,
                bytes(data),
                {
                    "content-type": XML_CONTENT_TYPE,
                    "cache-control": self._cache_control,
                    "upsert": "true",
                },
            )
        except Exception as exc:
            raise self._failure(exc, "upload") from None

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[StorageError | None]:
        return await put_each(self, items)

    async def get(self, key: str) -> bytes | None:
        check_key(key)
        try:
            return await self._bucket_api.download(key)
        except Exception as exc:
            failure = self._failure(exc, "download")
            if (failure.details or {}).get("storageCode") == "NoSuchKey":
                return None
            raise failure from None

    async def ensure_bucket(self) -> bool:
        try:
            await self._client.get_bucket(self.bucket)
            return False
        except Exception as exc:
            failure = self._failure(exc, "bucket lookup")
            if (failure.details or {}).get("storageCode") != "NoSuchBucket":
                raise failure from None
        try:
            await self._client.create_bucket(self.bucket, options={"public": False})
        except Exception as exc:
            failure = self._failure(exc, "bucket creation")
            if (failure.details or {}).get("storageCode") == "BucketAlreadyExists":
                return False  # created concurrently by another process
            raise failure from None
        log.info("created private storage bucket", extra={"bucket": self.bucket})
        return True

    async def check(self) -> None:
        try:
            bucket = await self._client.get_bucket(self.bucket)
        except Exception as exc:
            failure = self._failure(exc, "bucket check")
            if (failure.details or {}).get("storageCode") == "NoSuchBucket":
                failure = StorageError(
                    f"storage bucket {self.bucket!r} does not exist at {self.url}; "
                    "run `npcforge storage ensure-bucket`",
                    details=failure.details,
                    retryable=False,
                )
            raise failure from None
        if bucket.public:
            log.warning(
                "storage bucket is public: NPC XML files are readable without a key",
                extra={"bucket": self.bucket},
            )

    async def close(self) -> None:
        await self._http.aclose()
