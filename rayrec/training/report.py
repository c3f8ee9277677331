"""The Markdown report that every training run writes next to its checkpoints.

A report folder contains:
    report.md        config, dataset stats, per-epoch table, test metrics beside the
                     most-popular baseline, and wall time per stage
    config.yaml      the resolved run config
    loss.png         mean training loss per epoch
    valid_ndcg.png   validation NDCG@k per epoch

Plots use matplotlib's Agg canvas directly, so no display and no global backend are needed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rayrec.models.scoring import mask_items
from rayrec.training.metrics import METRIC_NAMES, metrics_from_sums, ranking_sums, reported_ks, target_ranks

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
BATCH_SIZE = 1024


def popularity_baseline(prepared_dir: str | Path, split: str = "test", k: int = 10) -> dict[str, float]:
    """HR, NDCG and MRR at 5, 10, 20 and k of ranking items by training-split popularity, on `split`.

    Same protocol as the model: full ranking over all items, each user's earlier items
    excluded. Equally popular items are ordered by item index, so no two scores tie.
    """
    prepared_dir = Path(prepared_dir)
    num_items = pq.read_metadata(prepared_dir / "vocab.parquet").num_rows
    scores = _popularity_scores(prepared_dir, num_items)

    table = pq.read_table(prepared_dir / split, columns=["history", "target"])
    histories = [np.asarray(history, dtype=np.int64) for history in table["history"].to_pylist()]
    targets = table["target"].to_numpy().astype(np.int64)

    ks = reported_ks(k)
    sums = torch.zeros(3 * len(ks) + 1, dtype=torch.float64)
    for start in range(0, len(targets), BATCH_SIZE):
        batch_targets = torch.as_tensor(targets[start:start + BATCH_SIZE])
        batch_histories = histories[start:start + BATCH_SIZE]
        logits = scores.repeat(len(batch_targets), 1)  # (B, N + 1)
        mask_items(logits, [h[h != t] for h, t in zip(batch_histories, batch_targets.tolist())])
        sums += ranking_sums(target_ranks(logits, batch_targets), ks)
    return metrics_from_sums(sums, ks, prefix=f"{split}_")


def _popularity_scores(prepared_dir: Path, num_items: int) -> torch.Tensor:
    """Score (N + 1,) per item index: higher is more popular; items absent from training rank last."""
    train_items = pq.read_table(prepared_dir / "train", columns=["item_ids"])["item_ids"]
    counts = pc.value_counts(pc.list_flatten(train_items))
    count_by_item = np.zeros(num_items + 1, dtype=np.float64)
    count_by_item[counts.field("values").to_numpy()] = counts.field("counts").to_numpy()

    # Order by count descending, then item index ascending, and score by that position.
    order = np.lexsort((np.arange(num_items + 1), -count_by_item))
    scores = np.empty(num_items + 1, dtype=np.float64)
    scores[order] = -np.arange(num_items + 1, dtype=np.float64)
    return torch.from_numpy(scores).to(torch.float32)


def write_report(
    report_dir: str | Path,
    *,
    config: dict[str, Any],
    prepared_dir: str | Path,
    history: list[dict[str, float]],
    test_metrics: dict[str, Any],
    baseline_metrics: dict[str, float],
    stage_times_s: dict[str, float | None],
    k: int,
) -> Path:
    """Write config.yaml, the two plots and report.md into `report_dir`; return the report path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    epochs = [int(row["epoch"]) for row in history]
    plot_curve(report_dir / "loss.png", epochs, [row["train_loss"] for row in history], "mean training loss")
    plot_curve(report_dir / "valid_ndcg.png", epochs, [row[f"valid_ndcg@{k}"] for row in history],
               f"validation NDCG@{k}")

    stats = _read_stats(Path(prepared_dir))
    sections = [
        "# Training report",
        _config_section(config),
        _dataset_section(stats, prepared_dir),
        _curves_section(history, k),
        _test_section(test_metrics, baseline_metrics, k),
        _timing_section(stage_times_s),
    ]
    path = report_dir / REPORT_FILE
    path.write_text("\n\n".join(sections) + "\n")
    logger.info("Training report written to %s", path)
    return path


def plot_curve(path: Path, epochs: list[int], values: list[float], label: str) -> None:
    """Draw one metric per epoch as a line with markers and save it as PNG."""
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(epochs, values, marker="o", markersize=3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch (0-based)")
    axes.set_ylabel(label)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _read_stats(prepared_dir: Path) -> dict[str, Any]:
    path = prepared_dir / "stats.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _config_section(config: dict[str, Any]) -> str:
    return "## Config\n\nResolved config (also in `config.yaml`):\n\n```yaml\n" + yaml.safe_dump(
        config, sort_keys=False).rstrip() + "\n```"


def _dataset_section(stats: dict[str, Any], prepared_dir: str | Path) -> str:
    if not stats:
        return f"## Dataset\n\nNo stats.json in {prepared_dir}."
    lengths = stats.get("sequence_length", {})
    rows = [
        ("prepared data", f"`{prepared_dir}`"),
        ("users", stats.get("users")),
        ("items", stats.get("items")),
        ("interactions", stats.get("interactions")),
        ("rows read", stats.get("rows_read")),
        ("rows dropped", ", ".join(f"{reason} {count}" for reason, count in stats.get("dropped", {}).items())),
        ("sequence length min / median / max", f"{lengths.get('min')} / {lengths.get('p50')} / {lengths.get('max')}"),
    ]
    return "## Dataset\n\n" + _table(["statistic", "value"], rows)


def _curves_section(history: list[dict[str, float]], k: int) -> str:
    rows = [
        (int(row["epoch"]), f"{row['train_loss']:.4f}", f"{row[f'valid_ndcg@{k}']:.4f}", f"{row[f'valid_hr@{k}']:.4f}",
         f"{row[f'valid_mrr@{k}']:.4f}", f"{row['epoch_time_s']:.1f}")
        for row in history
    ]
    table = _table(["epoch", "train loss", f"valid NDCG@{k}", f"valid HR@{k}", f"valid MRR@{k}", "epoch time (s)"], rows)
    return (f"## Training curves\n\n![mean training loss per epoch](loss.png)\n\n"
            f"![validation NDCG@{k} per epoch](valid_ndcg.png)\n\n{table}")


def _test_section(test_metrics: dict[str, Any], baseline_metrics: dict[str, float], k: int) -> str:
    rows = []
    for cutoff in reported_ks(k):
        for name in METRIC_NAMES:
            key = f"{name}@{cutoff}"
            rows.append((f"{name.upper()}@{cutoff}", _cell(test_metrics, f"test_{key}"),
                         _cell(test_metrics, f"test_unfiltered_{key}"), _cell(test_metrics, f"test_sampled_{key}"),
                         _cell(baseline_metrics, f"test_{key}")))
    coverage = [key for key in test_metrics if key.startswith("test_coverage@")]
    note = (f"Best epoch {test_metrics.get('best_epoch')} (0-based, chosen by validation NDCG@{k}) of "
            f"{test_metrics.get('epochs_trained')} trained; {test_metrics.get('test_users')} test users. "
            "The model column is full ranking over all items with each user's earlier items excluded; "
            "the unfiltered column keeps them; the sampled column (only with eval_sampled_negatives > 0) ranks the "
            "target against sampled unseen items and overstates quality. The most-popular baseline ranks items by "
            "their count in the training split under the model column's protocol.")
    if coverage:
        note += f" Catalog coverage of the top-{coverage[0].split('@')[1]} lists: {test_metrics[coverage[0]]:.4f}."
    header = ["metric", "model", "model, seen items kept", "model, sampled", "most popular"]
    return "## Test metrics\n\n" + _table(header, rows) + "\n\n" + note


def _cell(metrics: dict[str, Any], key: str) -> str:
    return f"{metrics[key]:.4f}" if key in metrics else "-"


def _timing_section(stage_times_s: dict[str, float | None]) -> str:
    rows = [(stage, "not recorded" if seconds is None else f"{seconds:.2f}") for stage, seconds in stage_times_s.items()]
    return "## Wall time per stage\n\n" + _table(["stage", "seconds"], rows)


def _table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_run_report(config: dict[str, Any], output, prepare_time_s: float | None = None) -> Path:
    """Compute the popularity baseline and write the report of a finished `train` call.

    `output` is the `TrainOutput` of `rayrec.training.trainer.train`. The report goes into the
    run directory next to the checkpoints; when that is a URI (s3://, gs://), into
    `<bundle_dir>/report` instead.
    """
    prepared_dir = Path(config["data"]["output_dir"])
    k = config["train"]["eval_k"]

    start = time.perf_counter()
    baseline = popularity_baseline(prepared_dir, "test", k)
    baseline_s = time.perf_counter() - start

    stage_times = {}
    if prepare_time_s is not None:
        stage_times["prepare (Ray Data)"] = prepare_time_s
    else:
        stage_times["prepare (Ray Data), earlier run"] = _read_stats(prepared_dir).get("wall_time_s")
    stage_times["train (Ray Train fit, with validation and test)"] = output.stage_times_s.get("ray_train_fit")
    stage_times["export bundle"] = output.stage_times_s.get("export_bundle")
    stage_times["popularity baseline"] = baseline_s

    # NOTE: a URI run directory is not written to; the report stays on local disk with the bundle.
    report_dir = Path(output.bundle_dir) / "report" if "://" in output.run_dir else Path(output.run_dir)
    return write_report(report_dir, config=config, prepared_dir=prepared_dir, history=output.history,
                        test_metrics=output.metrics, baseline_metrics=baseline, stage_times_s=stage_times, k=k)
