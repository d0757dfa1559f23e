"""Opaque paging tokens for `next` links, bound to the query they page through."""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from ..errors import QueryError

MAX_TOKEN_CHARS = 200


class TokenCodec:
    """Opaque paging tokens: offset + query digest, HMAC-signed so they cannot be forged or replayed.

    Offsets are not secret, but a token edited by hand or replayed against another query would page
    through a different result list: both are refused with a 400 naming `token`.
    """

    def __init__(self, secret: bytes | str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).hexdigest()[:24]

    def encode(self, offset: int, digest: str) -> str:
        payload = f"{offset}:{digest}"
        raw = f"{payload}:{self._mac(payload)}".encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def decode(self, token: str, digest: str) -> int:
        damaged = QueryError("token", "the token is damaged or was not issued by this server; "
                                      "start again without a token")
        if len(token) > MAX_TOKEN_CHARS:
            raise damaged
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
            offset_text, token_digest, mac = raw.decode("ascii").split(":")
        except (ValueError, binascii.Error):  # UnicodeError is a ValueError
            raise damaged from None
        if not hmac.compare_digest(mac, self._mac(f"{offset_text}:{token_digest}")):
            raise damaged
        if not hmac.compare_digest(token_digest, digest):
            raise QueryError("token", "the token belongs to another query; start again without a token")
        return int(offset_text)


def query_digest(canonical: dict[str, Any]) -> str:
    """What a token is bound to: the normalised query, not its spelling (GET and POST agree)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:24]

