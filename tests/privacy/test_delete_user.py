"""delete-user on a prepared folder and on bundle histories: counts, atomic rewrite, unknown users."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.cli import main
from rayrec.data.delete import UserNotFoundError, bundle_user_files, delete_user, prepared_user_files
from rayrec.data.privacy import USER_ID_KEY_ENV, MissingUserIdKeyError, pseudonymize

KEY = b"delete-test-key-0123456789"


def _log(path, users=("keep-me-1", "keep-me-2", "forget-me"), events=5):
    rows = [(user, f"item-{(u + e) % 6}", 100 + e) for u, user in enumerate(users) for e in range(events)]
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                             "timestamp": [r[2] for r in rows]}), path)


def _snapshot(root):
    return {str(path): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    from rayrec.data.config import PrepareConfig
    from rayrec.data.prepare import prepare

    root = tmp_path_factory.mktemp("delete")
    _log(root / "log.parquet")
    key_file = root / "key"
    key_file.write_bytes(KEY)
    folders = {}
    for name, options in (("raw", {}), ("hashed", {"pseudonymize_users": True, "user_id_key_file": str(key_file)})):
        config = PrepareConfig(dataset=None, input_path=str(root / "log.parquet"), output_dir=str(root / name),
                               num_shards=2, **options)
        prepare(config, [str(root / "log.parquet")])
        folders[name] = root / name
    return {"raw": folders["raw"], "hashed": folders["hashed"], "key_file": key_file}


def _copy(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def _user_rows(root, user):
    counts = {}
    for part in ("sequences", "train", "valid", "test"):
        user_ids = pq.read_table(root / part)["user_id"].to_pylist()
        counts[part] = user_ids.count(user)
    return counts


def test_prepared_rows_removed_per_file(prepared, tmp_path):
    root = _copy(prepared["raw"], tmp_path / "p")
    before = {part: pq.read_table(root / part).num_rows for part in ("sequences", "train", "valid", "test")}

    removed = delete_user(root, prepared_user_files(root), "forget-me")

    assert sum(removed.values()) == 4  # one row in each of sequences, train, valid and test
    assert all(count in (0, 1) for count in removed.values())
    assert all(name.split("/")[0] in ("sequences", "train", "valid", "test") for name in removed)
    assert _user_rows(root, "forget-me") == {"sequences": 0, "train": 0, "valid": 0, "test": 0}
    after = {part: pq.read_table(root / part).num_rows for part in ("sequences", "train", "valid", "test")}
    assert after == {part: count - 1 for part, count in before.items()}
    assert not list(root.rglob(".*.deleting"))


def test_unknown_user_changes_nothing(prepared, tmp_path):
    root = _copy(prepared["raw"], tmp_path / "p")
    before = _snapshot(root)

    with pytest.raises(UserNotFoundError, match="the user was not found in [0-9]+ file\\(s\\) under .*nothing was changed"):
        delete_user(root, prepared_user_files(root), "never-seen")
    assert _snapshot(root) == before


def test_pseudonymised_folder_needs_key(prepared, tmp_path, monkeypatch):
    monkeypatch.delenv(USER_ID_KEY_ENV, raising=False)
    root = _copy(prepared["hashed"], tmp_path / "p")
    before = _snapshot(root)

    with pytest.raises(MissingUserIdKeyError, match="its user ids are pseudonymised.*needs the user id key"):
        delete_user(root, prepared_user_files(root), "forget-me")
    assert _snapshot(root) == before

    removed = delete_user(root, prepared_user_files(root), "forget-me", str(prepared["key_file"]))
    assert sum(removed.values()) == 4
    assert _user_rows(root, pseudonymize(KEY, "forget-me"))["sequences"] == 0
    assert _user_rows(root, pseudonymize(KEY, "keep-me-1"))["sequences"] == 1
    assert pq.read_schema(next((root / "sequences").glob("*.parquet"))).metadata[b"rayrec.user_ids"] == b"hmac-sha256-128"


def test_cli_reports_counts(prepared, tmp_path, capsys):
    root = _copy(prepared["raw"], tmp_path / "p")

    assert main(["delete-user", "--user", "forget-me", "--prepared", str(root)]) == 0
    output = capsys.readouterr().out
    report = json.loads(output[: output.index("\n}\n") + 2])
    assert report["total_removed_rows"] == 4
    assert "still count the user's events" in output


def test_bad_targets_rejected(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="is not a prepared folder: missing sequences, train, valid, test"):
        prepared_user_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a rayrec bundle: bundle.json or histories.parquet is missing"):
        bundle_user_files(tmp_path)
    with pytest.raises(ValueError, match="delete-user works on a local bundle directory"):
        bundle_user_files("s3://bucket/bundle")

    with pytest.raises(SystemExit):
        main(["delete-user", "--user", "x", "--prepared", str(tmp_path), "--bundle", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err
