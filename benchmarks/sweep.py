"""Single-process tuning run: train SASRec on a prepared directory without Ray.

    python benchmarks/sweep.py --prepared outputs/ml-100k/prepared bs=32 epochs=30 windows=1 max_len=50 dropout=0.5

It uses the model, batching and metric code of the Ray training loop, in one process with
2 torch threads, so a setting can be tried in a few minutes. Each epoch prints validation
NDCG@10 and the test NDCG@10 of the best validation epoch so far; the last line sums up.
Keys: bs, lr, epochs, max_len, d (hidden size), layers, heads, dropout, wd (weight decay)
and seed. Switches: windows=1 cuts long sequences into windows, cos=1 decays the learning
rate on a cosine, and peruser=1 averages the loss per user. ema=DECAY scores an exponential
moving average of the weights in place of the weights (0, the default, turns it off).
"""

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from rayrec.models.config import ModelConfig
from rayrec.models.sasrec import SASRec, SequenceBatch
from rayrec.models.scoring import pad_histories
from rayrec.training.evaluate import ranking_sums_for_rows
from rayrec.training.loop import length_bucketed_batches, training_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, help="Prepared data directory from `rayrec prepare`.")
    parser.add_argument("settings", nargs="*", help="key=value settings, see above.")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.settings)

    torch.set_num_threads(2)
    torch.manual_seed(int(settings.get("seed", 0)))
    config = ModelConfig(max_len=int(settings.get("max_len", 200)), hidden_size=int(settings.get("d", 64)),
                         num_layers=int(settings.get("layers", 2)), num_heads=int(settings.get("heads", 2)),
                         dropout=float(settings.get("dropout", 0.2)))
    batch_size, epochs = int(settings.get("bs", 128)), int(settings.get("epochs", 40))
    lr, weight_decay = float(settings.get("lr", 1e-3)), float(settings.get("wd", 0.0))

    sequences = [np.asarray(x) for x in pq.read_table(f"{args.prepared}/train")["item_ids"].to_pylist()]
    if settings.get("windows") == "1":
        sequences = training_windows(sequences, config.max_len + 1)
    splits = {split: _read_split(args.prepared, split) for split in ("valid", "test")}
    num_items = pq.read_metadata(f"{args.prepared}/vocab.parquet").num_rows

    model = SASRec(config, num_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    steps = len(length_bucketed_batches(sequences, batch_size, np.random.default_rng(0))) * epochs
    scheduler = None
    if settings.get("cos") == "1":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps + 10,
                                                        pct_start=0.05, anneal_strategy="cos")

    ema_decay = float(settings.get("ema", 0.0))
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    best, start = (0.0, -1, 0.0), time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in length_bucketed_batches(sequences, batch_size, np.random.default_rng(epoch)):
            item_ids = pad_histories(batch, config.max_len + 1)
            loss = _loss(model, item_ids, per_user=settings.get("peruser") == "1")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)

        scored = averaged.module if averaged is not None else model
        valid = _ndcg(scored, splits["valid"])
        if valid > best[0]:
            best = (valid, epoch, _ndcg(scored, splits["test"]))
        print(f"epoch {epoch} valid NDCG@10 {valid:.4f} | best valid {best[0]:.4f} at epoch {best[1]}, "
              f"test {best[2]:.4f} | {time.perf_counter() - start:.0f} s", flush=True)
    print(f"FINAL {settings} best valid NDCG@10 {best[0]:.4f} epoch {best[1]} test NDCG@10 {best[2]:.4f}")


def _read_split(prepared: str, split: str):
    table = pq.read_table(f"{prepared}/{split}")
    return [np.asarray(h) for h in table["history"].to_pylist()], np.asarray(table["target"].to_pylist())


def _loss(model: SASRec, item_ids: torch.Tensor, per_user: bool) -> torch.Tensor:
    inputs, targets = item_ids[:, :-1], item_ids[:, 1:]
    if not per_user:
        return model(SequenceBatch(inputs, targets))[1]

    has_target = targets != 0  # (B, T)
    losses = F.cross_entropy(model.catalog_logits(model.encode(inputs)[has_target]), targets[has_target],
                             reduction="none")
    weights = (1.0 / has_target.sum(1).clamp(min=1).float()).unsqueeze(1).expand_as(has_target)[has_target]
    return (losses * weights).sum() / has_target.any(1).sum()


def _ndcg(model: SASRec, split) -> float:
    histories, targets = split
    return ranking_sums_for_rows(model, histories, targets, (10,)).metrics("")["ndcg@10"]


if __name__ == "__main__":
    main()
