"""The API key in a request: the one reading of its Authorization header, shared by every route
(the routers' dependencies, POST /logprob's express handler and the CSV middleware), so that
a header one of them accepts none of them refuses.

`Authorization: Bearer <key>`: the scheme is case-insensitive (RFC 7235 section 2.1: bearer,
BEARER), separated from the key by spaces or tabs; surrounding whitespace is not the key's.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr


def bearer_token(authorization: str | bytes | None) -> str | None:
    """The key of `Authorization: Bearer <key>`; None without a header, with another scheme
    (Basic ...) or without a key."""
    if authorization is None:
        return None
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
    parts = text.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    token = parts[1].strip()
    return token or None


def same_key(given: str, key: SecretStr) -> bool:
    """Whether given is the key, in constant time: the comparison must not reveal how many
    leading bytes matched."""
    return hmac.compare_digest(given.encode(), key.get_secret_value().encode())


def carries_key(authorization: str | bytes | None, key: SecretStr) -> bool:
    """Whether the Authorization header carries `Bearer <key>`."""
    token = bearer_token(authorization)
    return token is not None and same_key(token, key)
