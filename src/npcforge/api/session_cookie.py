"""The Supabase session cookie, as Supabase's SSR helpers (@supabase/ssr) write it.

The cookie `sb-<project-ref>-auth-token` holds the session supabase-js keeps: JSON with the
`access_token`, written as `base64-` + base64url(JSON) (older versions: the JSON itself,
URI-encoded). A value longer than a browser keeps in one cookie is split over
`sb-<project-ref>-auth-token.0`, `.1`, … which are joined in order; an unsplit cookie of the
name wins over chunks. The project ref is the first label of the project URL's host.

Pure: no I/O. The token found here is verified exactly like a bearer token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

BASE64_PREFIX = "base64-"
# Far above a real session (a few KiB): a bound on what is decoded and parsed.
MAX_SESSION_CHARS = 64 * 1024
MAX_CHUNKS = 16
_NAME = re.compile(r"^(sb-.+-auth-token)(?:\.(0|[1-9][0-9]*))?$")


class SessionCookieError(Exception):
    """The cookie is there but holds no session; `reason` is safe to show (never the value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def cookie_name_for(supabase_url: str | None) -> str | None:
    """`sb-<ref>-auth-token` for a project URL (as supabase-js names its storage key)."""
    if not supabase_url:
        return None
    host = urlsplit(supabase_url).hostname
    return f"sb-{host.split('.')[0]}-auth-token" if host else None


def _session_value(cookies: Mapping[str, str], name: str) -> str | None:
    whole = cookies.get(name)
    if whole:
        return whole
    chunks: list[str] = []
    while len(chunks) < MAX_CHUNKS and cookies.get(f"{name}.{len(chunks)}"):
        chunks.append(cookies[f"{name}.{len(chunks)}"])
    return "".join(chunks) or None


def session_cookie_names(cookies: Mapping[str, str]) -> set[str]:
    return {match.group(1) for key in cookies if (match := _NAME.match(key))}


def access_token_from_cookies(cookies: Mapping[str, str], name: str | None) -> str | None:
    """The session's access token, None when there is no session cookie at all.

    `name` is the project's cookie; without it the request's only `sb-…-auth-token` is used."""
    if name is None:
        names = session_cookie_names(cookies)
        if not names:
            return None
        if len(names) > 1:
            raise SessionCookieError("ambiguous_cookie")
        (name,) = names
    value = _session_value(cookies, name)
    if value is None:
        return None
    if len(value) > MAX_SESSION_CHARS:
        raise SessionCookieError("malformed")
    value = unquote(value)  # the SSR helpers URI-encode values that need it
    if value.startswith(BASE64_PREFIX):
        encoded = value[len(BASE64_PREFIX) :]
        try:
            value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
        except (binascii.Error, ValueError):
            raise SessionCookieError("malformed") from None
    try:
        session = json.loads(value)
    except ValueError:
        raise SessionCookieError("malformed") from None
    token = session.get("access_token") if isinstance(session, dict) else None
    # The older auth-helpers kept `[access_token, refresh_token, …]`.
    if isinstance(session, list) and session:
        token = session[0]
    if not isinstance(token, str) or not token:
        raise SessionCookieError("malformed")
    return token
