"""Pseudonymised user ids: a keyed hash replaces each raw user id before anything is written.

A pseudonym is the first 32 hex characters (128 bits) of HMAC-SHA256(key, raw user id in
UTF-8). The same key maps the same raw id to the same pseudonym, so serving can hash an
incoming `user_id` and find the stored history. Without the key a pseudonym cannot be
linked back to a raw id, short of trying every candidate id with the key.

The key is read from the file named by `data.user_id_key_file` (or a Serve `user_id_key_file`
argument), else from the RAYREC_USER_ID_KEY environment variable. It is never written to an
output. Outputs record only a fingerprint of the key (an HMAC of a fixed label), so a server
can check that its key is the one a bundle was made with.

Pseudonymised Parquet files carry the marker in their schema metadata, which `pq.read_table`
and `pq.write_table` keep, so training copies it into the bundle without knowing about it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

USER_ID_KEY_ENV = "RAYREC_USER_ID_KEY"
PSEUDONYM_HEX_CHARS = 32
MIN_KEY_BYTES = 16
SCHEME = "hmac-sha256-128"
SCHEME_METADATA_KEY = b"rayrec.user_ids"
FINGERPRINT_METADATA_KEY = b"rayrec.user_id_key_fingerprint"
_FINGERPRINT_LABEL = b"rayrec user id key fingerprint"


class MissingUserIdKeyError(ValueError):
    """User ids are or must be pseudonymised, but no valid key is available."""


def load_user_id_key(key_file: str | None = None) -> bytes | None:
    """Return the key from `key_file`, else from $RAYREC_USER_ID_KEY, else None.

    Surrounding whitespace (a trailing newline in a key file) is not part of the key.
    """
    if key_file is not None:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise MissingUserIdKeyError(f"user id key file not found: {path}. Create it with a secret of at least "
                                        f"{MIN_KEY_BYTES} bytes, or fix the path.")
        key = path.read_bytes().strip()
        where = f"user id key file {path}"
    else:
        value = os.environ.get(USER_ID_KEY_ENV)
        if value is None:
            return None
        key = value.strip().encode()
        where = f"${USER_ID_KEY_ENV}"

    if len(key) < MIN_KEY_BYTES:
        raise MissingUserIdKeyError(f"{where} contains {len(key)} bytes; a user id key needs at least {MIN_KEY_BYTES}. "
                                    "Use a random secret, for example the output of `openssl rand -hex 32`.")
    return key


def require_user_id_key(key_file: str | None, purpose: str) -> bytes:
    """Return the key as `load_user_id_key` does, or raise MissingUserIdKeyError naming `purpose`."""
    key = load_user_id_key(key_file)
    if key is None:
        raise MissingUserIdKeyError(f"{purpose} needs the user id key, but none was found: set {USER_ID_KEY_ENV} "
                                    "or name a key file (data.user_id_key_file, or user_id_key_file in Serve args).")
    return key


def key_fingerprint(key: bytes) -> str:
    """Return 16 hex characters that identify the key without revealing it."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def pseudonymize(key: bytes, user_id: str) -> str:
    """Return the pseudonym of one raw user id."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def pseudonymize_column(key: bytes, user_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return the pseudonyms of a string column, hashing each distinct id once."""
    encoded = pc.dictionary_encode(user_ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    pseudonyms = pa.array([pseudonymize(key, user) for user in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(pseudonyms, encoded.indices)


def schema_metadata(key: bytes) -> dict[bytes, bytes]:
    """Return the Parquet schema metadata that marks a file's user ids as pseudonyms of `key`."""
    return {SCHEME_METADATA_KEY: SCHEME.encode(), FINGERPRINT_METADATA_KEY: key_fingerprint(key).encode()}


def user_id_info(schema: pa.Schema) -> dict[str, str] | None:
    """Return {"scheme", "key_fingerprint"} from a schema marked by `schema_metadata`, else None."""
    metadata = schema.metadata or {}
    if SCHEME_METADATA_KEY not in metadata:
        return None
    return {"scheme": metadata[SCHEME_METADATA_KEY].decode(),
            "key_fingerprint": metadata.get(FINGERPRINT_METADATA_KEY, b"").decode()}


def check_key_matches(key: bytes, info: dict[str, str], where: str) -> None:
    """Raise MissingUserIdKeyError when `key` is not the key whose fingerprint `info` records."""
    if info.get("scheme") != SCHEME:
        raise ValueError(f"{where}: user ids use scheme {info.get('scheme')!r}, but this rayrec reads only {SCHEME}.")
    if key_fingerprint(key) != info.get("key_fingerprint"):
        raise MissingUserIdKeyError(
            f"{where}: its user ids were made with the key whose fingerprint is {info.get('key_fingerprint')}, "
            f"but the key given has fingerprint {key_fingerprint(key)}. Use the key that preprocessing used."
        )


@dataclass(frozen=True)
class UserIdLookup:
    """Maps a raw user id from a request to the id a bundle or prepared folder stores."""

    key: bytes | None = field(default=None, repr=False)  # None: ids are stored raw

    def stored_id(self, user_id: str) -> str:
        return user_id if self.key is None else pseudonymize(self.key, user_id)


def user_id_lookup(info: dict[str, str] | None, key_file: str | None, where: str) -> UserIdLookup:
    """Return the lookup for data whose `user_id_info` is `info`; pseudonymised data needs the matching key."""
    if info is None:
        return UserIdLookup()
    key = require_user_id_key(key_file, f"{where} (its user ids are pseudonymised)")
    check_key_matches(key, info, where)
    return UserIdLookup(key)
