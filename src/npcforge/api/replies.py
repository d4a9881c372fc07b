"""JSON answers already in bytes, with the headers every JSON answer carries."""

from __future__ import annotations

from starlette.responses import Response

from npcforge.api.errors import NO_STORE

JSON = "application/json"


class JsonReply(Response):
    """A JSON document already serialized; never cached by clients or proxies."""

    media_type = JSON

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        super().__init__(body, status_code=status_code, headers=NO_STORE)
