"""Data keys, field encryption, blind indexes and the audit key, shared by every store.

A :class:`KeyRing` holds one or more 32-byte data keys, each under a short key id
(``kid``). The *active* key encrypts; any key in the ring decrypts the tokens made
with it, so keys can rotate without a flag day.

* ``encrypt``/``decrypt``: AES-256-GCM. A token is ``"{kid}:{urlsafe_b64(nonce + ciphertext)}"``.
  The associated data (``aad``) binds a value to its place -- stores use
  ``f"{table}.{column}:{row_id}"`` -- so a ciphertext copied to another row or
  column does not decrypt.
* ``blind_index``: HMAC-SHA256 of a normalised value, for equality lookups on
  encrypted columns. Its key is derived from the *index* key (the first key the
  ring ever had), never from the active key, so rotation leaves indexes valid.
* ``audit_key``: the HMAC key of the audit hash chain (:mod:`smartpark.core.audit`),
  derived from the same index key.

Keys come from ``SMARTPARK_DATA_KEY`` or from a JSON key file that is created
with mode 0600 on first start (:meth:`KeyRing.from_env_or_file`). Stores keep
:attr:`KeyRing.index_fingerprint` and refuse a ring whose index key differs, so a
wrong or mis-rotated key fails loudly instead of making every lookup miss.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .core.errors import ConfigError

__all__ = ["ENV_INDEX_VAR", "ENV_VAR", "DecryptionError", "KeyRing"]

ENV_VAR = "SMARTPARK_DATA_KEY"
ENV_INDEX_VAR = "SMARTPARK_DATA_INDEX_KID"
KEY_BYTES = 32
NONCE_BYTES = 12
_DEFAULT_KID = "k1"
_INDEX_INFO = b"smartpark blind index v1"
_AUDIT_INFO = b"smartpark audit chain v1"
_FINGERPRINT_INFO = b"smartpark index key fingerprint v1"
_FORBIDDEN_IN_KID = frozenset(":,\x00 \t\r\n")


class DecryptionError(ValueError):
    """A token that does not decrypt: unknown key id, malformed, tampered with, or moved to another place."""


class KeyRing:
    """Data keys by key id; one is active (encrypts), one is the index key (blind indexes, audit chain)."""

    __slots__ = ("_keys", "_active_kid", "_index_kid", "_index_key", "_audit_key", "_index_fingerprint")

    def __init__(self, keys: Mapping[str, bytes], *, active_kid: str, index_kid: str) -> None:
        if not keys:
            raise ConfigError("数据密钥为空", "the key ring holds no keys")
        for kid, key in keys.items():
            _check_key(kid, key)
        for role, kid in (("active", active_kid), ("index", index_kid)):
            if kid not in keys:
                raise ConfigError(f"密钥编号 {kid!r} 不在密钥列表中", f"the {role} key id {kid!r} is not among the keys")
        self._keys = dict(keys)
        self._active_kid = active_kid
        self._index_kid = index_kid
        self._index_key = _derive(keys[index_kid], _INDEX_INFO)
        self._audit_key = _derive(keys[index_kid], _AUDIT_INFO)
        self._index_fingerprint = _derive(keys[index_kid], _FINGERPRINT_INFO).hex()

    def __repr__(self) -> str:
        return f"KeyRing(active_kid={self._active_kid!r}, index_kid={self._index_kid!r}, kids={list(self._keys)!r})"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def generate(cls, kid: str = _DEFAULT_KID) -> KeyRing:
        """A ring with one fresh random key (tests, first start)."""
        return cls({kid: AESGCM.generate_key(bit_length=256)}, active_kid=kid, index_kid=kid)

    @classmethod
    def from_env_or_file(cls, key_file: Path, env: Mapping[str, str] = os.environ) -> KeyRing:
        """The ring from ``SMARTPARK_DATA_KEY`` if set, else from ``key_file`` (created 0600 if missing).

        The variable holds either one urlsafe-base64 32-byte key (key id ``k1``) or a
        comma list ``kid:key,kid2:key2`` whose first entry is active. The index key is the
        first entry too, unless ``SMARTPARK_DATA_INDEX_KID`` names another: after a rotation
        (``k2:new,k1:old``) set it to the original key id so blind indexes stay valid.
        The file is JSON: ``{"active": kid, "index": kid, "keys": {kid: key}}``; ``index``
        defaults to the first key listed.
        """
        value = env.get(ENV_VAR, "").strip()
        if value:
            return cls._from_env_value(value, env.get(ENV_INDEX_VAR, "").strip() or None)
        key_file = Path(key_file)
        if not key_file.exists():
            try:
                return cls._create_key_file(key_file)
            except FileExistsError:
                pass  # another process created it first: use theirs
        return cls._from_key_file(key_file)

    @classmethod
    def _from_env_value(cls, value: str, index_kid: str | None) -> KeyRing:
        if ":" not in value and "," not in value:
            key = _decode_key(value, ENV_VAR)
            return cls({_DEFAULT_KID: key}, active_kid=_DEFAULT_KID, index_kid=index_kid or _DEFAULT_KID)
        keys: dict[str, bytes] = {}
        for item in value.split(","):
            kid, sep, encoded = item.strip().partition(":")
            if not sep or not kid:
                raise ConfigError(
                    f"环境变量 {ENV_VAR} 格式不正确，应为“kid:base64密钥,kid2:base64密钥”",
                    f"{ENV_VAR} is malformed: expected one urlsafe-base64 32-byte key "
                    "or a list 'kid:base64key,kid2:base64key'",
                )
            if kid in keys:
                raise ConfigError(f"环境变量 {ENV_VAR} 中密钥编号 {kid} 重复",
                                  f"{ENV_VAR} lists the key id {kid!r} twice")
            keys[kid] = _decode_key(encoded, f"{ENV_VAR} ({kid})")
        first = next(iter(keys))
        return cls(keys, active_kid=first, index_kid=index_kid or first)

    @classmethod
    def _from_key_file(cls, path: Path) -> KeyRing:
        _check_private(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            encoded_keys = doc["keys"]
            active = doc["active"]
            index = doc.get("index", next(iter(encoded_keys), None))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"密钥文件 {path} 格式不正确，应为 JSON：{{\"active\": 编号, \"keys\": {{编号: base64密钥}}}}",
                f"key file {path} is malformed: expected JSON "
                '{"active": kid, "index": kid, "keys": {kid: urlsafe-base64 32-byte key}}',
            ) from exc
        if not isinstance(encoded_keys, dict) or not all(isinstance(v, str) for v in encoded_keys.values()):
            raise ConfigError(f"密钥文件 {path} 中 keys 应为“编号: base64密钥”的对象",
                              f'key file {path}: "keys" must map key ids to urlsafe-base64 strings')
        keys = {kid: _decode_key(encoded, f"{path} ({kid})") for kid, encoded in encoded_keys.items()}
        return cls(keys, active_kid=active, index_kid=index)

    @classmethod
    def _create_key_file(cls, path: Path) -> KeyRing:
        """Write a fresh one-key ring to ``path`` with mode 0600; ``FileExistsError`` if it appeared meanwhile."""
        ring = cls.generate()
        doc = {
            "active": ring.active_kid,
            "index": ring.index_kid,
            "keys": {kid: _encode(key) for kid, key in ring._keys.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        return ring

    # -- keys -------------------------------------------------------------------------------------
    @property
    def active_kid(self) -> str:
        return self._active_kid

    @property
    def index_kid(self) -> str:
        """The key the blind indexes and the audit key are derived from; fixed for the ring's life."""
        return self._index_kid

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def audit_key(self) -> bytes:
        """HMAC key of the audit hash chain."""
        return self._audit_key

    def purpose_key(self, label: bytes) -> bytes:
        """A key of its own for one purpose (registration links, receipt codes, owner sign-in), derived from the
        audit key: ``HMAC-SHA256(audit_key, label)``. Like the audit key it survives a rotation of the data key."""
        return hmac.new(self._audit_key, label, hashlib.sha256).digest()

    @property
    def index_fingerprint(self) -> str:
        """Identifies the index key without revealing it; a store records it and refuses a ring that differs."""
        return self._index_fingerprint

    def add_key(self, kid: str, key: bytes, *, make_active: bool = True) -> None:
        """Add a key for rotation; new tokens use it when ``make_active``. Blind indexes do not change."""
        if kid in self._keys:
            raise ValueError(f"key id {kid!r} is already in the ring")
        _check_key(kid, key)
        self._keys[kid] = key
        if make_active:
            self._active_kid = kid

    # -- encryption -------------------------------------------------------------------------------
    def encrypt(self, plaintext: str, aad: str) -> str:
        """AES-256-GCM with the active key and a random nonce; the token names the key."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._keys[self._active_kid]).encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        return f"{self._active_kid}:{_encode(nonce + sealed)}"

    def decrypt(self, token: str, aad: str) -> str:
        """The plaintext of ``token``; :class:`DecryptionError` if it was altered or belongs elsewhere."""
        kid, _, body = token.partition(":")
        key = self._keys.get(kid)
        if key is None:
            raise DecryptionError(f"no key with id {kid!r} in the key ring")
        try:
            raw = _decode(body)
        except (ValueError, binascii.Error) as exc:
            raise DecryptionError("token is not valid urlsafe base64") from exc
        if len(raw) <= NONCE_BYTES:
            raise DecryptionError("token is too short")
        try:
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad.encode("utf-8"))
        except InvalidTag as exc:
            raise DecryptionError("token was tampered with or does not belong here") from exc
        return plain.decode("utf-8")

    def needs_rewrap(self, token: str) -> bool:
        """True when ``token`` was made with a key other than the active one (a rotation job re-encrypts it)."""
        return token.partition(":")[0] != self._active_kid

    def blind_index(self, kind: str, normalised: str) -> str:
        """HMAC-SHA256 (hex) of ``normalised`` for equality lookups; ``kind`` separates plates, phones, IDs."""
        if not kind or "\x00" in kind:
            raise ValueError("blind index kind must be a non-empty name without NUL")
        message = kind.encode("utf-8") + b"\x00" + normalised.encode("utf-8")
        return hmac.new(self._index_key, message, hashlib.sha256).hexdigest()


def _derive(root: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(root)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode(text: str) -> bytes:
    """Strict urlsafe base64 (padding optional); ``ValueError`` on anything else."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _decode_key(encoded: str, where: str) -> bytes:
    """A 32-byte key from urlsafe base64 (padding optional)."""
    try:
        key = _decode(encoded.strip())
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{where} 中的密钥无效：应为 32 字节密钥的 urlsafe-base64 编码（44 个字符）",
            f"the key in {where} is invalid: expected a 32-byte key in urlsafe base64 (44 characters), "
            'e.g. from python -c "import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())"',
        )
    return key


def _check_key(kid: str, key: bytes) -> None:
    if not isinstance(kid, str) or not kid or _FORBIDDEN_IN_KID & set(kid):
        raise ConfigError(f"密钥编号 {kid!r} 无效", f"key id {kid!r} is invalid: use a short name without ':' ',' or spaces")
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigError(f"密钥 {kid} 长度应为 32 字节", f"key {kid!r} must be {KEY_BYTES} bytes")


def _check_private(path: Path) -> None:
    """Refuse a key file that group or others may read or write (POSIX only)."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"密钥文件 {path} 的权限为 {mode:04o}，其他用户可以访问；请执行 chmod 600 {path}",
            f"key file {path} has mode {mode:04o} and is accessible to group/others; run: chmod 600 {path}",
        )
