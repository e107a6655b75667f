"""The wire rules of the 银联云闪付 demo provider (protocol v1), shared by the channel and the loopback provider.

See the package README for the full protocol. In short:

* every request carries ``X-UPD-Merchant``, ``X-UPD-Timestamp`` (Unix seconds), ``X-UPD-Nonce`` (32 hex digits)
  and ``X-UPD-Signature`` = hex HMAC-SHA256 under the merchant's API key of::

      METHOD \\n PATH \\n TIMESTAMP \\n NONCE \\n BODY

* every reply and every notification carries ``X-UPD-Timestamp``, ``X-UPD-Nonce`` and ``X-UPD-Signature`` =
  base64 RSA-SHA256 (PKCS#1 v1.5) under the provider's private key of::

      TIMESTAMP \\n NONCE \\n BODY

  and the merchant verifies it with the provider's public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "MERCHANT_HEADER",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "load_provider_public_key",
    "new_nonce",
    "reply_message",
    "request_message",
    "sign_reply",
    "sign_request",
    "verify_reply",
    "verify_request",
]

MERCHANT_HEADER = "X-UPD-Merchant"
TIMESTAMP_HEADER = "X-UPD-Timestamp"
NONCE_HEADER = "X-UPD-Nonce"
SIGNATURE_HEADER = "X-UPD-Signature"

_NONCE = re.compile(r"^[0-9a-f]{32}$")


def new_nonce() -> str:
    return secrets.token_hex(16)


def now_stamp() -> str:
    return str(int(time.time()))


def valid_nonce(nonce: str) -> bool:
    return bool(_NONCE.match(nonce))


# -- requests: HMAC-SHA256 under the merchant's API key ----------------------------------------------------
def request_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What a request signature covers; ``path`` is the request target as sent (no scheme or host)."""
    return b"\n".join((method.upper().encode("ascii"), path.encode("ascii"), timestamp.encode("ascii"),
                       nonce.encode("ascii"), body))


def sign_request(api_key: bytes, message: bytes) -> str:
    return hmac.new(api_key, message, hashlib.sha256).hexdigest()


def verify_request(api_key: bytes, message: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign_request(api_key, message), signature.strip().lower())


# -- replies and notifications: RSA-SHA256 under the provider's key -----------------------------------------
def reply_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return b"\n".join((timestamp.encode("ascii"), nonce.encode("ascii"), body))


def sign_reply(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def verify_reply(public_key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    try:
        public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def load_provider_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """The provider's public key PEM (SubjectPublicKeyInfo or PKCS#1) -> a key; refuses non-RSA or short keys."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a PEM public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ValueError("the provider public key must be RSA with at least 2048 bits")
    return key
