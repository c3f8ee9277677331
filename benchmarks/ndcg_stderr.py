"""Standard error of a bundle's test NDCG@10 over users.

    python benchmarks/ndcg_stderr.py --bundle outputs/ml-100k/bundle --prepared outputs/ml-100k/prepared

A run-to-run difference smaller than about two standard errors is within the noise of the
split. Uses the same masking and ranking code as evaluation.
"""

import argparse

import numpy as np
import pyarrow.parquet as pq
import torch

from rayrec.models.bundle import load_bundle
from rayrec.models.scoring import mask_items, pad_histories
from rayrec.training.metrics import target_ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="Bundle directory.")
    parser.add_argument("--prepared", required=True, help="Prepared data directory.")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="Split (default: test).")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    table = pq.read_table(f"{args.prepared}/{args.split}")
    histories = [np.asarray(h) for h in table["history"].to_pylist()]
    targets = torch.tensor(table["target"].to_pylist())

    logits = bundle.model.score_last(pad_histories(histories, bundle.model.config.max_len))
    mask_items(logits, [h[h != t] for h, t in zip(histories, targets.tolist())])
    ranks = target_ranks(logits, targets).double()
    ndcg = torch.where(ranks < 10, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    print(f"{args.split} NDCG@10 {ndcg.mean().item():.4f}, standard error {(ndcg.std() / len(ndcg) ** 0.5).item():.4f} "
          f"over {len(ndcg)} users")


if __name__ == "__main__":
    main()
