"""Who may call the server: loopback binds are open, any other bind needs an API key (or an explicit opt-out)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress

from zscir.errors import ZscirError


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, insecure_no_auth: bool) -> None:
    """Refuse to listen on a non-loopback address without a key, unless told to."""
    if api_key is not None and not api_key.strip():
        raise ZscirError("option --api-key is empty: give a secret (e.g. from `python -c \"import secrets; "
                         "print(secrets.token_urlsafe(32))\"`)")
    if api_key is not None and (api_key != api_key.strip() or not api_key.isprintable()):
        raise ZscirError("option --api-key has spaces around it or control characters: no request could "
                         "present it (header values are stripped); give the key alone")
    if api_key and insecure_no_auth:
        raise ZscirError("give either --api-key or --insecure-no-auth, not both")
    if not is_loopback(host) and not api_key and not insecure_no_auth:
        raise ZscirError(f"--host {host} is reachable from other machines: give --api-key KEY (or ZSCIR_API_KEY), "
                         "or --insecure-no-auth to serve without one")


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key a request carries: ``X-API-Key: KEY``, ``Authorization: Bearer KEY``, or HTTP Basic with KEY as
    the password."""
    key = headers.get(b"x-api-key")
    if key is not None:
        return key.strip()
    auth = headers.get(b"authorization", b"")
    scheme, _, value = auth.partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip()
    if scheme.lower() == b"basic":  # what a browser sends after its login prompt: any user name, the key as password
        try:
            return base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return b""
    return None


def key_matches(presented: bytes | None, expected: bytes) -> bool:
    """Constant-time: compare_digest's time does not depend on where the first difference is, and comparing
    digests (always 32 bytes) keeps it from depending on the presented key's length either."""
    given = hashlib.sha256(presented if presented is not None else b"").digest()
    return hmac.compare_digest(given, hashlib.sha256(expected).digest()) and presented is not None
