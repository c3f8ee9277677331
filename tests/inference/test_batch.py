"""Offline batch top-k on Ray Data against the single-user path that `rayrec recommend` and POST /recommend use."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import write_interactions
from rayrec.cli import main
from rayrec.inference.batch import BatchRecommendConfig, batch_recommend, read_user_ids
from rayrec.models.bundle import load_bundle, write_bundle
from rayrec.models.config import ModelConfig
from rayrec.models.recommend import rank_queries, resolve_query
from rayrec.models.sasrec import SASRec

K = 5


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A bundle with random weights over a generated log of 40 users and 30 items."""
    root = tmp_path_factory.mktemp("batch")
    log = write_interactions(root / "log.parquet", num_users=40, num_items=30, seed=3).sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending")])
    item_ids = sorted(set(log["item_id"].to_pylist()))
    index = {item: position + 1 for position, item in enumerate(item_ids)}
    histories: dict[str, list[int]] = {}
    for user, item in zip(log["user_id"].to_pylist(), log["item_id"].to_pylist()):
        histories.setdefault(user, []).append(index[item])

    torch.manual_seed(0)
    # max_len 8 is below most history lengths, so truncation is covered too.
    config = ModelConfig(max_len=8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    counts = np.bincount([i for items in histories.values() for i in items], minlength=len(item_ids) + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    return write_bundle(
        root / "bundle",
        state_dict=SASRec(config, len(item_ids)).state_dict(),
        model_config=config,
        num_items=len(item_ids),
        vocab=pa.table({"item_index": pa.array(np.arange(1, len(item_ids) + 1, dtype=np.int32)),
                        "item_id": pa.array(item_ids)}),
        histories=pa.table({"user_id": list(histories), "item_ids": pa.array(list(histories.values()),
                                                                              pa.list_(pa.int32()))}),
        popularity=pa.table({"item_index": pa.array(order + 1, pa.int32()), "count": pa.array(counts[order])}),
        metrics={},
        dataset="generated",
    )


def _rows(output) -> dict[str, dict]:
    return {row["user_id"]: row for row in pq.read_table(output).to_pylist()}


def _single_user(bundle, user: str, exclude_seen: bool = True) -> list[tuple[str, float]]:
    query = resolve_query(bundle, user, None, K, exclude_seen=exclude_seen)
    return [(bundle.item_ids[index], score) for index, score in rank_queries(bundle, [query])[0]]


@pytest.mark.ray
def test_batch_equals_single_user_path(ray_local, bundle_dir, tmp_path):
    # Batches of 7 users over 2 actors, so rows are ranked in padded batches of mixed lengths.
    stats = batch_recommend(BatchRecommendConfig(bundle=str(bundle_dir), output=str(tmp_path / "top"), k=K,
                                                 batch_size=7, num_actors=2, num_cpus=0.5))
    bundle = load_bundle(bundle_dir)
    rows = _rows(tmp_path / "top")

    assert stats.users_in == 40
    assert stats.rows_written == 40
    assert stats.unknown_users == 0
    assert sorted(rows) == sorted(bundle.histories)
    for user, row in rows.items():
        expected = _single_user(bundle, user)
        assert row["item_ids"] == [item for item, _ in expected], user
        assert row["scores"] == pytest.approx([score for _, score in expected], abs=1e-5), user
        assert not set(row["item_ids"]) & {bundle.item_ids[i] for i in bundle.histories[user]}, user


@pytest.mark.ray
def test_batch_include_seen_matches(ray_local, bundle_dir, tmp_path):
    batch_recommend(BatchRecommendConfig(bundle=str(bundle_dir), output=str(tmp_path / "top"), k=K,
                                         exclude_seen=False))
    bundle = load_bundle(bundle_dir)
    rows = _rows(tmp_path / "top")

    for user in ("u000", "u017", "u039"):
        assert rows[user]["item_ids"] == [item for item, _ in _single_user(bundle, user, exclude_seen=False)]


@pytest.mark.ray
def test_unknown_users_counted_by_cli(ray_local, bundle_dir, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("u001\nnobody\nu002\nu001\nghost\n")

    code = main(["batch-recommend", "--bundle", str(bundle_dir), "--output", str(tmp_path / "top"),
                 "-k", "3", "--users", str(users)])
    out = capsys.readouterr().out
    stats = json.loads(out[: out.rindex("}") + 1])
    table = pq.read_table(tmp_path / "top")

    assert code == 0
    assert stats["users_in"] == 5
    assert stats["rows_written"] == 3
    assert stats["unknown_users"] == 2
    assert stats["unknown_user_examples"] == ["nobody", "ghost"]
    assert sorted(table["user_id"].to_pylist()) == ["u001", "u001", "u002"]
    assert all(len(items) == 3 for items in table["item_ids"].to_pylist())
    assert "2 of 5 requested users not in the bundle" in out


@pytest.mark.ray
def test_only_unknown_users_writes_nothing(ray_local, bundle_dir, tmp_path):
    users = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["x1", "x2"]}), users)

    stats = batch_recommend(BatchRecommendConfig(bundle=str(bundle_dir), output=str(tmp_path / "top"),
                                                 users_path=str(users)))

    assert stats.users_in == 2
    assert stats.rows_written == 0
    assert stats.unknown_users == 2


def test_missing_bundle_clear_error(tmp_path, capsys):
    code = main(["batch-recommend", "--bundle", str(tmp_path / "no-bundle"), "--output", str(tmp_path / "top")])
    err = capsys.readouterr().err

    assert code == 2
    assert "no-bundle is not a rayrec bundle: missing model.pt" in err
    assert "train.bundle_dir" in err
    assert not (tmp_path / "top").exists()


def test_users_file_errors(tmp_path):
    blank = tmp_path / "users.txt"
    blank.write_text("u1\n\nu2\n")
    no_column = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user": ["u1"]}), no_column)

    with pytest.raises(ValueError, match=r"users.txt, line 2: empty user id"):
        read_user_ids(str(blank))
    with pytest.raises(ValueError, match=r"no user_id column \(columns: \['user'\]\)"):
        read_user_ids(str(no_column))
    with pytest.raises(FileNotFoundError, match="Users file not found"):
        read_user_ids(str(tmp_path / "missing.txt"))


def test_config_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k \(0\) must be at least 1"):
        BatchRecommendConfig(bundle="b", output="o", k=0)


@pytest.mark.ray
def test_too_many_actor_cpus_rejected(ray_local, bundle_dir, tmp_path):
    config = BatchRecommendConfig(bundle=str(bundle_dir), output=str(tmp_path / "top"), num_actors=3, num_cpus=1.0)

    with pytest.raises(ValueError, match=r"3 scoring actors x 1 CPUs = 3 CPUs, but the Ray cluster has 2"):
        batch_recommend(config)
    assert not (tmp_path / "top").exists()
