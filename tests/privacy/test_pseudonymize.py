"""Keyed-hash user ids: key loading, hashing, and a prepare run that writes no raw user id."""

import hashlib
import hmac
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.data.config import PrepareConfig
from rayrec.data.privacy import (
    USER_ID_KEY_ENV, MissingUserIdKeyError, check_key_matches, key_fingerprint, load_user_id_key, pseudonymize,
    pseudonymize_column, schema_metadata, user_id_info,
)

KEY = b"test-key-0123456789abcdef"


def test_pseudonym_is_truncated_hmac():
    expected = hmac.new(KEY, "alice".encode(), hashlib.sha256).hexdigest()[:32]
    assert pseudonymize(KEY, "alice") == expected
    assert pseudonymize(b"another-key-0123456789", "alice") != expected


def test_column_hashes_each_row():
    column = pa.chunked_array([["bob", "alice"], ["bob"]])
    assert pseudonymize_column(KEY, column).to_pylist() == [pseudonymize(KEY, u) for u in ("bob", "alice", "bob")]


def test_key_file_wins_over_env(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("file-key-0123456789abcdef\n")
    monkeypatch.setenv(USER_ID_KEY_ENV, "env-key-0123456789abcdef")

    assert load_user_id_key(str(key_file)) == b"file-key-0123456789abcdef"
    assert load_user_id_key(None) == b"env-key-0123456789abcdef"


def test_missing_or_short_key(tmp_path, monkeypatch):
    monkeypatch.delenv(USER_ID_KEY_ENV, raising=False)
    assert load_user_id_key(None) is None
    with pytest.raises(MissingUserIdKeyError, match="user id key file not found: .*nokey"):
        load_user_id_key(str(tmp_path / "nokey"))

    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(MissingUserIdKeyError, match="contains 3 bytes; a user id key needs at least 16"):
        load_user_id_key(str(short))


def test_fingerprint_check():
    info = user_id_info(pa.schema([], metadata=schema_metadata(KEY)))
    assert info == {"scheme": "hmac-sha256-128", "key_fingerprint": key_fingerprint(KEY)}
    assert KEY.decode() not in json.dumps(info)

    check_key_matches(KEY, info, "bundle x")
    with pytest.raises(MissingUserIdKeyError, match="bundle x: its user ids were made with the key whose fingerprint"):
        check_key_matches(b"wrong-key-0123456789abcdef", info, "bundle x")


def test_key_file_without_option_rejected():
    with pytest.raises(ValueError, match="data.user_id_key_file is set but data.pseudonymize_users is false"):
        PrepareConfig(dataset=None, input_path="x.parquet", user_id_key_file="key")


def _log(path: Path) -> list[str]:
    users = [f"person-{name}@example.test" for name in ("ada", "grace", "linus", "barbara", "ken", "dennis")]
    rows = [(user, f"item-{(u * 7 + e) % 9}", 1000 + e) for u, user in enumerate(users) for e in range(5)]
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                             "timestamp": [r[2] for r in rows]}), path)
    return users


@pytest.mark.ray
def test_prepare_writes_no_raw_user_id(ray_local, tmp_path, monkeypatch):
    from rayrec.data.prepare import prepare

    monkeypatch.delenv(USER_ID_KEY_ENV, raising=False)
    users = _log(tmp_path / "log.parquet")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    output = tmp_path / "prepared"
    config = PrepareConfig(dataset=None, input_path=str(tmp_path / "log.parquet"), output_dir=str(output),
                           pseudonymize_users=True, user_id_key_file=str(key_file), num_shards=2)

    stats = prepare(config, [str(tmp_path / "log.parquet")])

    assert stats.users == len(users)
    assert stats.user_ids == {"scheme": "hmac-sha256-128", "key_fingerprint": key_fingerprint(KEY)}
    files = [path for path in output.rglob("*") if path.is_file()]
    assert len(files) >= 5
    for path in files:
        data = path.read_bytes()
        assert KEY not in data, path
        for user in users:
            assert user.encode() not in data, (path, user)
    for split in ("sequences", "train", "valid", "test"):
        table = pq.read_table(output / split)
        assert sorted(table["user_id"].to_pylist()) == sorted(pseudonymize(KEY, u) for u in users), split
        assert user_id_info(table.schema)["key_fingerprint"] == key_fingerprint(KEY)


@pytest.mark.ray
def test_prepare_without_key_changes_nothing(ray_local, tmp_path, monkeypatch):
    from rayrec.data.prepare import prepare

    monkeypatch.delenv(USER_ID_KEY_ENV, raising=False)
    _log(tmp_path / "log.parquet")
    output = tmp_path / "prepared"
    output.mkdir()
    (output / "keep.txt").write_text("earlier output")
    config = PrepareConfig(dataset=None, input_path=str(tmp_path / "log.parquet"), output_dir=str(output),
                           pseudonymize_users=True)

    with pytest.raises(MissingUserIdKeyError, match="data.pseudonymize_users needs the user id key.*RAYREC_USER_ID_KEY"):
        prepare(config, [str(tmp_path / "log.parquet")])
    assert (output / "keep.txt").read_text() == "earlier output"
