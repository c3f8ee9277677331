"""Prepare a slice of ml-100k and train 2 epochs with 2 DDP workers on a 2-CPU local Ray."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rayrec.models.bundle import load_bundle
from rayrec.training.config import TrainConfig
from rayrec.training.evaluate import evaluate_bundle

pytestmark = pytest.mark.ray


def test_training_finishes_with_all_users_evaluated(trained):
    metrics = trained["output"].metrics
    users = trained["stats"].users

    # 120 users over 2 workers and 16 blocks: shards differ in size, and no user is dropped.
    assert metrics["valid_users"] == users
    assert metrics["test_users"] == users
    assert metrics["epochs_trained"] == 2
    for k in (5, 10, 20):
        for name in ("hr", "ndcg", "mrr"):
            assert 0.0 <= metrics[f"test_{name}@{k}"] <= 1.0
            # Excluding seen items can only move the target up.
            assert metrics[f"test_{name}@{k}"] >= metrics[f"test_unfiltered_{name}@{k}"] - 1e-12
    assert 0.0 < metrics["test_coverage@20"] <= 1.0


def test_bundle_contents(trained):
    bundle_dir = trained["output"].bundle_dir
    bundle = load_bundle(bundle_dir)
    sequences = pq.read_table(trained["prepared"] / "sequences")

    assert set(bundle.histories) == set(sequences["user_id"].to_pylist())
    assert len(bundle.item_ids) == bundle.model.num_items + 1
    state = torch.load(bundle_dir / "model.pt", weights_only=True)
    assert torch.count_nonzero(state["item_emb.weight"][0]) == 0
    metadata = json.loads((bundle_dir / "bundle.json").read_text())
    assert metadata["metrics"]["test_users"] == trained["stats"].users


def test_offline_evaluation_matches_training_metrics(trained):
    offline = evaluate_bundle(trained["output"].bundle_dir, trained["prepared"], "test", k=10)
    reported = trained["output"].metrics

    for name in ("hr@10", "ndcg@10", "mrr@10"):
        assert offline[f"test_{name}"] == pytest.approx(reported[f"test_{name}"], abs=1e-6)


def test_checkpoints_in_absolute_storage_path(trained):
    run_dir = trained["output"].run_dir
    checkpoints = sorted(p for p in (trained["root"] / "runs").rglob("state.pt"))

    assert run_dir.startswith(str(trained["root"]))
    assert checkpoints, "every epoch writes a checkpoint with state.pt"
    saved = torch.load(checkpoints[-1], weights_only=True)
    assert set(saved) == {"model", "best_model", "optimizer", "scheduler", "train_state", "torch_rng", "cuda_rng"}


def test_workers_that_would_starve_ray_data_fail_fast(ray_local, trained, tmp_path):
    from rayrec.models.config import ModelConfig
    from rayrec.training.trainer import train

    config = TrainConfig(num_workers=2, cpus_per_worker=1.0, storage_path=str(tmp_path), bundle_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="Lower train.num_workers or train.cpus_per_worker"):
        train(trained["prepared"], ModelConfig(max_len=10, hidden_size=8, num_layers=1, num_heads=1), config, "x")


def test_missing_prepared_directory(ray_local, tmp_path):
    from rayrec.models.config import ModelConfig
    from rayrec.training.trainer import train

    with pytest.raises(FileNotFoundError, match="Run `rayrec prepare` first"):
        train(tmp_path, ModelConfig(), TrainConfig(storage_path=str(tmp_path)), "x")


def test_length_bucketed_batches_cover_every_sequence():
    from rayrec.training.loop import length_bucketed_batches

    sequences = [np.arange(n) for n in range(1, 100)]
    batches = length_bucketed_batches(sequences, 8, np.random.default_rng(0))

    seen = sorted(len(s) for batch in batches for s in batch)
    assert seen == list(range(1, 100))
    assert all(len(batch) <= 8 for batch in batches)


def test_matched_batch_order_balances_steps():
    from rayrec.training.loop import length_bucketed_batches, matched_batch_order

    def cost(batch):
        return len(batch) * max((len(s) for s in batch), default=0)

    data_rng = np.random.default_rng(1)
    shards = [[np.arange(n) for n in data_rng.integers(2, 52, size=size)] for size in (400, 380)]
    per_worker = [length_bucketed_batches(shard, 8, np.random.default_rng([7, rank]))
                  for rank, shard in enumerate(shards)]
    matched = [matched_batch_order(batches, 50, np.random.default_rng([7])) for batches in per_worker]

    # Every batch is kept once, and the shorter shard is padded with empty batches to 50 steps.
    assert [len(m) for m in matched] == [50, 50]
    assert sorted(map(cost, matched[1])) == sorted([0] * (50 - len(per_worker[1])) + list(map(cost, per_worker[1])))
    assert sum(len(s) for b in matched[0] for s in b) == sum(len(s) for s in shards[0])

    # A step waits for its slowest worker: matching removes most of that wait.
    unmatched_wait = sum(abs(cost(a) - cost(b)) for a, b in zip(per_worker[0], per_worker[1]))
    matched_wait = sum(abs(cost(a) - cost(b)) for a, b in zip(*matched))
    assert matched_wait < unmatched_wait / 3


def test_training_windows_cover_each_target_once():
    from rayrec.training.loop import training_windows

    sequence = np.arange(1, 12)  # 11 items: 10 targets
    windows = training_windows([sequence, np.array([7])], window=5)

    assert [w.tolist() for w in windows] == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [1, 2, 3]]
    targets = [t for w in windows for t in w[1:].tolist()]
    assert sorted(targets) == list(range(2, 12))
