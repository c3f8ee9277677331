"""Final test metrics of a training run whose worker node is killed mid-run, beside an undisturbed run.

Starts a two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, 3 CPUs per node)
and prepares the data once. Then trains the same config twice with one worker on each node:
once undisturbed, and once with the worker node killed (no graceful shutdown) after the
first checkpoint. A replacement node joins right after the kill, as an autoscaler would add
one. Ray Train restarts the workers from the latest checkpoint (FailureConfig max_failures=2).

    python benchmarks/node_kill.py --output outputs/bench/node_kill.json

Outputs go under --work-dir, an absolute path that both nodes of this one machine read.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from rayrec.config import load_config
from rayrec.data.prepare import prepare_from_config
from rayrec.training.trainer import train

logger = logging.getLogger("node_kill")

NODE_CPUS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="Interaction log for data.input_path (default: the ml-100k dataset).")
    parser.add_argument("--epochs", type=int, default=8, help="Epochs per run (default: 8).")
    parser.add_argument("--work-dir", default="outputs/bench/node_kill", help="Output folder (default: outputs/bench/node_kill).")
    parser.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work_dir = Path(args.work_dir).resolve()
    overrides = [
        f"data.output_dir={work_dir}/prepared", f"train.storage_path={work_dir}/runs",
        "model.hidden_size=32", "model.num_layers=1", "train.batch_size=128",
        f"train.max_epochs={args.epochs}", f"train.patience={args.epochs}",
        # 2 of a node's 3 CPUs per worker: the two workers can only run on different nodes.
        "train.num_workers=2", "train.cpus_per_worker=2",
    ]
    if args.input:
        overrides += ["data.dataset=null", f"data.input_path={args.input}"]
    config = load_config("configs/ml-100k.yaml", overrides)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=NODE_CPUS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        prepare_from_config(config.data)
        results = [_run(config, work_dir, "undisturbed", None), _run(config, work_dir, "disturbed", (cluster, worker))]
    finally:
        ray.shutdown()
        cluster.shutdown()

    print(json.dumps(results, indent=2))
    print("| run | test NDCG@10 | test HR@10 | epochs | resumed at epoch | wall time (s) |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(f"| {result['run']} | {result['test_ndcg@10']:.4f} | {result['test_hr@10']:.4f} | "
              f"{result['epochs_trained']} | {result['resumed_at_epochs'] or '-'} | {result['wall_time_s']:.0f} |")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


def _run(config, work_dir: Path, name: str, kill) -> dict:
    """Train one run; with `kill` = (cluster, node), kill that node after the run's first checkpoint."""
    config.train.run_name = name
    config.train.bundle_dir = str(work_dir / f"bundle-{name}")
    outcome: dict = {}
    start = time.perf_counter()
    thread = threading.Thread(target=lambda: outcome.update(
        output=train(config.data.output_dir, config.model, config.train, "node-kill")), daemon=True)
    thread.start()

    if kill is not None:
        cluster, node = kill
        run_dir = work_dir / "runs" / name
        while thread.is_alive() and not list(run_dir.glob("checkpoint_*/state.pt")):
            time.sleep(0.2)
        logger.info("Killing the worker node after checkpoint %s", sorted(run_dir.glob("checkpoint_*")))
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(num_cpus=NODE_CPUS)
    thread.join()

    if "output" not in outcome:
        raise RuntimeError(f"run {name} failed; see the log above")
    metrics = outcome["output"].metrics
    return {"run": name, "test_ndcg@10": metrics["test_ndcg@10"], "test_hr@10": metrics["test_hr@10"],
            "epochs_trained": metrics["epochs_trained"], "resumed_at_epochs": metrics.get("resumed_at_epochs", []),
            "wall_time_s": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    main()
