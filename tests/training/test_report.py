"""The training report: popularity baseline, plots and the Markdown page."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.training.report import popularity_baseline, write_report, write_run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_prepared(folder, train_rows, test_rows, num_items):
    """A hand-made prepared folder: vocabulary, train item lists and test (history, target) rows."""
    folder.mkdir()
    pq.write_table(pa.table({"item_index": list(range(1, num_items + 1)),
                             "item_id": [f"i{i}" for i in range(1, num_items + 1)]}), folder / "vocab.parquet")
    (folder / "train").mkdir()
    pq.write_table(pa.table({"item_ids": pa.array(train_rows, pa.list_(pa.int32()))}), folder / "train" / "part.parquet")
    (folder / "test").mkdir()
    pq.write_table(pa.table({
        "history": pa.array([history for history, _ in test_rows], pa.list_(pa.int32())),
        "target": pa.array([target for _, target in test_rows], pa.int32()),
    }), folder / "test" / "part.parquet")
    return folder


def test_popularity_baseline_hand_computed(tmp_path):
    # Training counts: item 1 three times, item 2 twice, item 3 once, items 4 and 5 never.
    prepared = _write_prepared(tmp_path / "prepared", [[1, 2, 1, 3], [1, 2]], [
        ([1, 2, 1, 3], 2),  # 1 and 3 excluded, so 2 ranks first: hit at rank 0
        ([1, 2], 4),        # 1 and 2 excluded; 3 outranks the never-trained 4: rank 1
        ([2], 3),           # 2 excluded, ranking 1, 3: rank 1
    ], num_items=5)

    metrics = popularity_baseline(prepared, "test", k=10)

    assert metrics["test_users"] == 3
    assert metrics["test_hr@10"] == pytest.approx(1.0)
    assert metrics["test_ndcg@10"] == pytest.approx((1.0 + 2 / math.log2(3)) / 3)
    assert metrics["test_mrr@10"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert popularity_baseline(prepared, "test", k=1)["test_hr@1"] == pytest.approx(1 / 3)


def test_popularity_untrained_items_rank_last(tmp_path):
    # Items 4 and 5 never occur in training: after items 1, 2, 3, in index order.
    prepared = _write_prepared(tmp_path / "prepared", [[1, 2, 1, 3], [1, 2]], [([1], 5)], num_items=5)

    assert popularity_baseline(prepared, "test", k=3)["test_hr@3"] == 0.0
    assert popularity_baseline(prepared, "test", k=4)["test_mrr@4"] == pytest.approx(1 / 4)


def test_popularity_ties_broken_by_index(tmp_path):
    # Items 1 and 2 are equally popular: item 1 ranks first, so a target of 2 is at rank 1.
    prepared = _write_prepared(tmp_path / "prepared", [[1, 2], [2, 1]], [([3], 2)], num_items=3)

    assert popularity_baseline(prepared, "test", k=10)["test_mrr@10"] == pytest.approx(0.5)


def _history(epochs):
    return [{"epoch": e, "train_loss": 5.0 - e, "valid_ndcg@10": 0.01 * (e + 1), "valid_hr@10": 0.02 * (e + 1),
             "valid_mrr@10": 0.005 * (e + 1), "valid_users": 3, "train_time_s": 1.5, "epoch_time_s": 2.0}
            for e in range(epochs)]


def test_write_report_files(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "stats.json").write_text('{"users": 7, "items": 11, "interactions": 99, "rows_read": 100, '
                                         '"dropped": {"too_short_user": 1}, "sequence_length": {"min": 3, "p50": 9, "max": 30}}')
    test_metrics = {"test_ndcg@10": 0.1234, "test_hr@10": 0.2345, "test_mrr@10": 0.0987, "test_users": 7,
                    "test_unfiltered_ndcg@10": 0.1111, "test_coverage@20": 0.375, "best_epoch": 2, "epochs_trained": 3}
    baseline = {"test_ndcg@10": 0.0456, "test_hr@10": 0.0789, "test_mrr@10": 0.0321}

    path = write_report(tmp_path / "report", config={"model": {"hidden_size": 48}}, prepared_dir=prepared,
                        history=_history(3), test_metrics=test_metrics, baseline_metrics=baseline,
                        stage_times_s={"prepare (Ray Data)": 12.5, "train": 61.25}, k=10)

    text = path.read_text()
    assert (tmp_path / "report" / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "report" / "valid_ndcg.png").read_bytes().startswith(PNG_MAGIC)
    assert "hidden_size: 48" in (tmp_path / "report" / "config.yaml").read_text()
    assert "hidden_size: 48" in text
    assert "| NDCG@10 | 0.1234 | 0.1111 | - | 0.0456 |" in text
    assert "| HR@10 | 0.2345 | - | - | 0.0789 |" in text
    assert "| NDCG@5 | - | - | - | - |" in text  # cutoffs 5 and 20 are listed even when missing
    assert "coverage of the top-20 lists: 0.3750" in text
    assert "| 2 | 3.0000 | 0.0300 | 0.0600 | 0.0150 | 2.0 |" in text
    assert "| users | 7 |" in text
    assert "| rows dropped | too_short_user 1 |" in text
    assert "| train | 61.25 |" in text
    assert "![validation NDCG@10 per epoch](valid_ndcg.png)" in text


@pytest.mark.ray
def test_trained_run_history_and_report(trained, tmp_path):
    output = trained["output"]
    config = {"data": {"output_dir": str(trained["prepared"])}, "train": {"eval_k": 10}}

    history = output.history
    assert [row["epoch"] for row in history] == [0, 1]
    assert all(row["train_loss"] > 0 and 0 <= row["valid_ndcg@10"] <= 1 for row in history)
    assert all(row["train_time_s"] <= row["epoch_time_s"] for row in history)
    assert set(output.stage_times_s) == {"ray_train_fit", "export_bundle"}

    path = write_run_report(config, output, prepare_time_s=3.0)

    assert path.parent == trained["root"] / "runs" / path.parent.name
    text = path.read_text()
    assert "| prepare (Ray Data) | 3.00 |" in text
    assert f"| NDCG@10 | {output.metrics['test_ndcg@10']:.4f} |" in text
    assert (path.parent / "loss.png").read_bytes().startswith(PNG_MAGIC)


def test_uri_run_dir_reports_beside_bundle(tmp_path):
    from rayrec.training.trainer import TrainOutput

    prepared = _write_prepared(tmp_path / "prepared", [[1, 2, 1, 3], [1, 2]], [([2], 3)], num_items=5)
    metrics = {"test_ndcg@10": 0.5, "test_hr@10": 1.0, "test_mrr@10": 0.5, "test_users": 1, "best_epoch": 0,
               "epochs_trained": 1}
    output = TrainOutput(bundle_dir=tmp_path / "bundle", metrics=metrics, run_dir="s3://bucket/runs/first",
                         wall_time_s=9.0, history=_history(1), stage_times_s={"ray_train_fit": 8.0, "export_bundle": 0.5})
    config = {"data": {"output_dir": str(prepared)}, "train": {"eval_k": 10}}

    path = write_run_report(config, output)

    assert path == tmp_path / "bundle" / "report" / "report.md"
    text = path.read_text()
    assert "| NDCG@10 | 0.5000 | - | - | 0.6309 |" in text  # the baseline ranks item 3 second
    assert "| train (Ray Train fit, with validation and test) | 8.00 |" in text
    assert "| prepare (Ray Data), earlier run | not recorded |" in text  # the hand-made folder has no stats.json
