"""Reading the Supabase SSR session cookie, and telling origins apart (pure functions)."""

from __future__ import annotations

import base64
import json

import pytest

from npcforge.api.origins import origin_host
from npcforge.api.session_cookie import (
    SessionCookieError,
    access_token_from_cookies,
    cookie_name_for,
)

NAME = "sb-abcdefghijklmnop-auth-token"


def b64(document: object) -> str:
    return "base64-" + base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def test_the_cookie_name_comes_from_the_project_url_as_supabase_js_derives_it():
    assert cookie_name_for("https://abcdefghijklmnop.supabase.co") == NAME
    assert cookie_name_for("https://abcdefghijklmnop.supabase.co/") == NAME
    assert cookie_name_for("http://127.0.0.1:54321") == "sb-127-auth-token"
    assert cookie_name_for(None) is None


def test_chunks_are_joined_in_order_and_a_whole_cookie_wins():
    value = b64({"access_token": "a.b.c", "user": {"bio": "é" * 50}})
    pieces = {f"{NAME}.{i}": value[i * 40 : (i + 1) * 40] for i in range(len(value) // 40 + 1)}
    assert access_token_from_cookies(pieces, NAME) == "a.b.c"
    assert access_token_from_cookies({**pieces, NAME: b64({"access_token": "x.y.z"})}, NAME) == (
        "x.y.z"
    )
    # A gap ends the chunks: what follows it belongs to no session.
    broken = {k: v for k, v in pieces.items() if not k.endswith(".1")}
    with pytest.raises(SessionCookieError):
        access_token_from_cookies(broken, NAME)


def test_older_formats_and_the_single_family_rule():
    raw = '{"access_token":"a.b.c"}'
    assert access_token_from_cookies({NAME: raw}, None) == "a.b.c"
    assert access_token_from_cookies({NAME: '["a.b.c","refresh",null]'}, NAME) == "a.b.c"
    assert access_token_from_cookies({"other": "1", f"{NAME}-code-verifier": "v"}, None) is None
    two = {NAME: raw, "sb-zzz-auth-token": raw}
    with pytest.raises(SessionCookieError, match="ambiguous_cookie"):
        access_token_from_cookies(two, None)
    assert access_token_from_cookies(two, NAME) == "a.b.c"
    for bad in ("base64-@@@", b64({"refresh_token": "r"}), b64([]), "x" * 70_000):
        with pytest.raises(SessionCookieError, match="malformed"):
            access_token_from_cookies({NAME: bad}, NAME)


def test_origin_hosts_ignore_scheme_and_default_ports_but_not_other_ports():
    assert origin_host("https://app.example.com") == "app.example.com"
    assert origin_host("http://APP.example.com:80") == "app.example.com"
    assert origin_host("http://localhost:4321") == "localhost:4321"
    assert origin_host("null") is None
    assert origin_host("file:///etc/passwd") is None
