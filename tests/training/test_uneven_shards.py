"""Uneven and empty shards must not hang DDP: 7 users over 3 workers, BERT4Rec, sampled softmax."""

import pytest

from conftest import write_interactions

pytestmark = pytest.mark.ray


def test_three_workers_seven_users_finish(ray_local, tmp_path):
    from rayrec.data.config import PrepareConfig
    from rayrec.data.prepare import prepare
    from rayrec.models.config import ModelConfig
    from rayrec.training.config import TrainConfig
    from rayrec.training.trainer import train

    log = tmp_path / "log.parquet"
    write_interactions(log, num_users=7, num_items=12, seed=3)
    prepared = tmp_path / "prepared"
    stats = prepare(PrepareConfig(dataset=None, input_path=str(log), output_dir=str(prepared)), [str(log)])

    model = ModelConfig(architecture="bert4rec", max_len=10, hidden_size=8, num_layers=1, num_heads=1,
                        loss="sampled_softmax", negatives="in_batch")
    # 7 users cannot split evenly over 3 workers, and with 24 blocks a worker can get none.
    config = TrainConfig(num_workers=3, batch_size=3, max_epochs=2, patience=5, grad_accumulation_steps=2,
                         storage_path=str(tmp_path / "runs"), bundle_dir=str(tmp_path / "bundle"))
    output = train(prepared, model, config, "uneven")

    assert stats.users == 7
    assert output.metrics["epochs_trained"] == 2
    assert output.metrics["valid_users"] == 7
    assert output.metrics["test_users"] == 7
    assert all(row["train_loss"] > 0 for row in output.history)
