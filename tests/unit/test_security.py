"""KeyRing: where keys come from, AES-GCM tokens, blind indexes and rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
import unittest
from pathlib import Path

from smartpark.core.errors import ConfigError
from smartpark.security import ENV_INDEX_VAR, ENV_VAR, DecryptionError, KeyRing


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))


class TempDirTest(unittest.TestCase):
    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.dir = Path(folder.name)
        self.key_file = self.dir / "secrets" / "data-key.json"


class TestKeyRingFromEnvironment(TempDirTest):
    def test_a_single_key_gets_key_id_k1(self) -> None:
        ring = KeyRing.from_env_or_file(self.key_file, {ENV_VAR: b64(KEY_A)})
        self.assertEqual(ring.active_kid, "k1")
        self.assertEqual(ring.index_kid, "k1")
        self.assertTrue(ring.encrypt("x", "t.c:1").startswith("k1:"))

    def test_unpadded_keys_are_accepted(self) -> None:
        ring = KeyRing.from_env_or_file(self.key_file, {ENV_VAR: b64(KEY_A).rstrip("=")})
        same = KeyRing({"k1": KEY_A}, active_kid="k1", index_kid="k1")
        self.assertEqual(ring.decrypt(same.encrypt("京A12345", "a"), "a"), "京A12345")

    def test_a_key_list_makes_the_first_key_active_and_the_index_key(self) -> None:
        ring = KeyRing.from_env_or_file(self.key_file, {ENV_VAR: f"new:{b64(KEY_B)}, old:{b64(KEY_A)}"})
        self.assertEqual(ring.active_kid, "new")
        self.assertEqual(ring.index_kid, "new")
        self.assertEqual(ring.kids, ("new", "old"))
        old = KeyRing({"old": KEY_A}, active_kid="old", index_kid="old")
        self.assertEqual(ring.decrypt(old.encrypt("13812345678", "p"), "p"), "13812345678")

    def test_after_a_rotation_the_index_key_can_be_pinned_to_the_original_key(self) -> None:
        original = KeyRing.from_env_or_file(self.key_file, {ENV_VAR: f"old:{b64(KEY_A)}"})
        rotated = KeyRing.from_env_or_file(
            self.key_file, {ENV_VAR: f"new:{b64(KEY_B)},old:{b64(KEY_A)}", ENV_INDEX_VAR: "old"})
        self.assertEqual((rotated.active_kid, rotated.index_kid), ("new", "old"))
        self.assertEqual(rotated.blind_index("plate", "京A12345"), original.blind_index("plate", "京A12345"))
        self.assertEqual(rotated.index_fingerprint, original.index_fingerprint)
        with self.assertRaises(ConfigError):
            KeyRing.from_env_or_file(self.key_file, {ENV_VAR: f"new:{b64(KEY_B)}", ENV_INDEX_VAR: "old"})

    def test_the_environment_wins_and_no_key_file_is_created(self) -> None:
        KeyRing.from_env_or_file(self.key_file, {ENV_VAR: b64(KEY_A)})
        self.assertFalse(self.key_file.exists())

    def test_malformed_values_are_refused_with_what_was_expected(self) -> None:
        for value in ("not base64!", b64(KEY_A[:16]), f"k1:{b64(KEY_A)},k2", f":{b64(KEY_A)}",
                      f"k1:{b64(KEY_A)},k1:{b64(KEY_B)}", f"k 1:{b64(KEY_A)}"):
            with self.subTest(value=value), self.assertRaises(ConfigError) as caught:
                KeyRing.from_env_or_file(self.key_file, {ENV_VAR: value})
            self.assertTrue(caught.exception.zh and caught.exception.en)
        with self.assertRaises(ConfigError) as caught:
            KeyRing.from_env_or_file(self.key_file, {ENV_VAR: "short"})
        self.assertIn("32-byte key in urlsafe base64", str(caught.exception))

    def test_error_messages_never_echo_the_key(self) -> None:
        secret = b64(KEY_A)[:40]  # valid base64, wrong length
        with self.assertRaises(ConfigError) as caught:
            KeyRing.from_env_or_file(self.key_file, {ENV_VAR: f"k1:{secret}"})
        self.assertNotIn(secret, str(caught.exception))


class TestKeyRingFromFile(TempDirTest):
    def test_a_missing_key_file_is_created_0600_with_its_folder(self) -> None:
        ring = KeyRing.from_env_or_file(self.key_file, {})
        self.assertEqual(stat.S_IMODE(self.key_file.stat().st_mode), 0o600)
        doc = json.loads(self.key_file.read_text())
        self.assertEqual(doc["active"], ring.active_kid)
        self.assertEqual(doc["index"], ring.index_kid)
        self.assertEqual(len(base64.urlsafe_b64decode(doc["keys"][ring.active_kid])), 32)

    def test_the_created_file_is_used_on_the_next_start(self) -> None:
        first = KeyRing.from_env_or_file(self.key_file, {})
        second = KeyRing.from_env_or_file(self.key_file, {})
        self.assertEqual(second.decrypt(first.encrypt("11010519491231002X", "owners.id:1"), "owners.id:1"),
                         "11010519491231002X")
        self.assertEqual(first.blind_index("plate", "京A12345"), second.blind_index("plate", "京A12345"))
        self.assertEqual(first.audit_key, second.audit_key)

    def test_a_key_file_readable_by_others_is_refused_until_chmod_600(self) -> None:
        KeyRing.from_env_or_file(self.key_file, {})
        os.chmod(self.key_file, 0o644)
        with self.assertRaises(ConfigError) as caught:
            KeyRing.from_env_or_file(self.key_file, {})
        self.assertIn("chmod 600", caught.exception.en)
        self.assertIn("chmod 600", caught.exception.zh)
        os.chmod(self.key_file, 0o600)
        KeyRing.from_env_or_file(self.key_file, {})

    def test_a_hand_written_file_without_index_uses_the_first_key(self) -> None:
        self.write_key_file({"active": "k2", "keys": {"k1": b64(KEY_A), "k2": b64(KEY_B)}})
        ring = KeyRing.from_env_or_file(self.key_file, {})
        self.assertEqual(ring.active_kid, "k2")
        self.assertEqual(ring.index_kid, "k1")
        only_first = KeyRing({"k1": KEY_A}, active_kid="k1", index_kid="k1")
        self.assertEqual(ring.blind_index("phone", "13812345678"), only_first.blind_index("phone", "13812345678"))

    def test_malformed_key_files_are_refused(self) -> None:
        for content in ("not json", "[]", json.dumps({"keys": {"k1": b64(KEY_A)}}),
                        json.dumps({"active": "k1", "keys": {"k1": "tooshort"}}),
                        json.dumps({"active": "k9", "keys": {"k1": b64(KEY_A)}}),
                        json.dumps({"active": "k1", "keys": ["k1"]})):
            with self.subTest(content=content):
                self.write_key_file_text(content)
                with self.assertRaises(ConfigError):
                    KeyRing.from_env_or_file(self.key_file, {})

    def write_key_file(self, doc: dict) -> None:
        self.write_key_file_text(json.dumps(doc))

    def write_key_file_text(self, text: str) -> None:
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        self.key_file.write_text(text)
        os.chmod(self.key_file, 0o600)


class TestEncryption(unittest.TestCase):
    def setUp(self) -> None:
        self.ring = KeyRing.generate()

    def test_round_trip(self) -> None:
        aad = "owners.phone_enc:1"
        for text in ("京A12345", "13812345678", "", "阿依古丽·买买提"):
            self.assertEqual(self.ring.decrypt(self.ring.encrypt(text, aad), aad), text)

    def test_tokens_name_the_key_and_never_repeat(self) -> None:
        a, b = self.ring.encrypt("京A12345", "x"), self.ring.encrypt("京A12345", "x")
        self.assertNotEqual(a, b)
        self.assertTrue(a.startswith("k1:"))
        self.assertNotIn("A12345", a)

    def test_a_token_moved_to_another_row_or_column_does_not_decrypt(self) -> None:
        token = self.ring.encrypt("13812345678", "owners.phone_enc:row-1")
        for aad in ("owners.phone_enc:row-2", "visitors.phone_enc:row-1", ""):
            with self.subTest(aad=aad), self.assertRaises(DecryptionError):
                self.ring.decrypt(token, aad)

    def test_a_tampered_token_does_not_decrypt(self) -> None:
        token = self.ring.encrypt("13812345678", "a")
        kid, body = token.split(":")
        raw = bytearray(base64.urlsafe_b64decode(body))
        for i in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
            flipped = bytearray(raw)
            flipped[i] ^= 0x01
            with self.subTest(byte=i), self.assertRaises(DecryptionError):
                self.ring.decrypt(f"{kid}:{b64(bytes(flipped))}", "a")

    def test_malformed_tokens_and_unknown_keys_raise_decryption_error(self) -> None:
        for token in ("", "k1", "k1:", "k1:!!!", "k1:AAAA", "k9:" + self.ring.encrypt("x", "a").split(":")[1]):
            with self.subTest(token=token), self.assertRaises(DecryptionError):
                self.ring.decrypt(token, "a")
        self.assertTrue(issubclass(DecryptionError, ValueError))

    def test_another_ring_cannot_decrypt(self) -> None:
        with self.assertRaises(DecryptionError):
            KeyRing.generate().decrypt(self.ring.encrypt("x", "a"), "a")

    def test_repr_does_not_show_key_material(self) -> None:
        ring = KeyRing({"k1": KEY_A}, active_kid="k1", index_kid="k1")
        self.assertNotIn(b64(KEY_A)[:10], repr(ring))
        self.assertNotIn(KEY_A.hex()[:10], repr(ring))


class TestBlindIndex(unittest.TestCase):
    def test_deterministic_per_ring_and_kind(self) -> None:
        ring = KeyRing.generate()
        self.assertEqual(ring.blind_index("plate", "京A12345"), ring.blind_index("plate", "京A12345"))
        self.assertNotEqual(ring.blind_index("plate", "京A12345"), ring.blind_index("plate", "京A12346"))
        self.assertNotEqual(ring.blind_index("phone", "13812345678"), ring.blind_index("id_number", "13812345678"))
        self.assertNotEqual(ring.blind_index("plate", "京A12345"), KeyRing.generate().blind_index("plate", "京A12345"))
        self.assertRegex(ring.blind_index("plate", "京A12345"), r"^[0-9a-f]{64}$")

    def test_the_audit_key_is_separate_from_the_data_and_index_keys(self) -> None:
        ring = KeyRing({"k1": KEY_A}, active_kid="k1", index_kid="k1")
        self.assertEqual(len(ring.audit_key), 32)
        self.assertNotEqual(ring.audit_key, KEY_A)


class TestRotation(unittest.TestCase):
    def setUp(self) -> None:
        self.ring = KeyRing({"k1": KEY_A}, active_kid="k1", index_kid="k1")
        self.old_token = self.ring.encrypt("京A12345", "plates.plate_enc:x")
        self.index = self.ring.blind_index("plate", "京A12345")
        self.audit_key = self.ring.audit_key
        self.ring.add_key("k2", KEY_B)

    def test_new_tokens_use_the_new_key_and_old_tokens_still_decrypt(self) -> None:
        self.assertEqual(self.ring.active_kid, "k2")
        self.assertTrue(self.ring.encrypt("x", "a").startswith("k2:"))
        self.assertEqual(self.ring.decrypt(self.old_token, "plates.plate_enc:x"), "京A12345")

    def test_only_old_tokens_need_rewrapping(self) -> None:
        self.assertTrue(self.ring.needs_rewrap(self.old_token))
        self.assertFalse(self.ring.needs_rewrap(self.ring.encrypt("x", "a")))

    def test_blind_indexes_the_audit_key_and_the_fingerprint_do_not_change(self) -> None:
        self.assertEqual(self.ring.index_kid, "k1")
        self.assertEqual(self.ring.blind_index("plate", "京A12345"), self.index)
        self.assertEqual(self.ring.audit_key, self.audit_key)
        before_rotation = KeyRing({"k1": KEY_A}, active_kid="k1", index_kid="k1")
        self.assertEqual(self.ring.index_fingerprint, before_rotation.index_fingerprint)
        self.assertNotEqual(self.ring.index_fingerprint, KeyRing.generate().index_fingerprint)

    def test_a_key_added_inactive_only_decrypts(self) -> None:
        other = KeyRing({"k3": bytes(32)}, active_kid="k3", index_kid="k3")
        self.ring.add_key("k3", bytes(32), make_active=False)
        self.assertEqual(self.ring.active_kid, "k2")
        self.assertEqual(self.ring.decrypt(other.encrypt("y", "a"), "a"), "y")

    def test_key_ids_cannot_be_reused(self) -> None:
        with self.assertRaises(ValueError):
            self.ring.add_key("k1", KEY_B)


class TestPurposeKeys(unittest.TestCase):
    def test_one_key_per_purpose_stable_and_apart_from_the_audit_key(self) -> None:
        ring = KeyRing.generate()
        links, receipts = ring.purpose_key(b"smartpark registration links v1"), ring.purpose_key(b"smartpark receipts v1")
        self.assertEqual(len(links), 32)
        self.assertEqual(links, ring.purpose_key(b"smartpark registration links v1"))
        self.assertEqual(len({links, receipts, ring.audit_key}), 3)
        self.assertNotEqual(links, KeyRing.generate().purpose_key(b"smartpark registration links v1"))
