"""GPU smoke run: train one epoch on one GPU in bf16 autocast, serve one request, print throughput.

    python benchmarks/gpu_smoke.py --output outputs/bench/gpu_smoke.json

Generates a seeded synthetic log, so it needs no download and runs on machines without
internet access. Prepares it on Ray Data and trains SASRec for one epoch with one Ray Train
worker on one GPU (`train.use_gpu=true`, `train.precision=bf16`). Then deploys
serve_configs/production.yaml (one GPU replica) with the new bundle on 127.0.0.1 and sends
one POST /recommend.

Exits with status 2 and a message, before starting Ray, when torch sees no CUDA GPU.
NOTE: this script has not been run on a GPU yet; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("gpu_smoke")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Interactions in the synthetic log (default: 1000000).")
    parser.add_argument("--work-dir", default="outputs/bench/gpu_smoke", help="Output folder (default: outputs/bench/gpu_smoke).")
    parser.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    parser.add_argument("--cpu-check", action="store_true",
                        help="Run the same steps on CPU in fp32 with serve_configs/ml-100k.yaml, to check the script "
                             "itself on a machine without a GPU; its numbers say nothing about GPUs (default: off).")
    args = parser.parse_args()

    if not args.cpu_check and not torch.cuda.is_available():
        print("gpu_smoke: error: torch sees no CUDA GPU (torch.cuda.is_available() is False), so nothing was run. "
              "Run this script on a machine with an NVIDIA GPU and the CUDA build of torch.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(args.rows, Path(args.work_dir).resolve(), args.cpu_check)

    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run(rows: int, work_dir: Path, cpu_check: bool = False) -> dict:
    """Prepare, train one bf16 epoch on one GPU, serve one request; return the measurements."""
    import httpx
    import pyarrow.parquet as pq
    import ray

    from rayrec.config import load_config
    from rayrec.data.prepare import prepare_from_config
    from rayrec.data.synthetic import SyntheticSpec, generate
    from rayrec.serving.deploy import deploy, shutdown
    from rayrec.training.trainer import train

    spec = SyntheticSpec(rows=rows, users=max(1, rows // 100), items=max(1, rows // 500), files=4)
    generate(spec, work_dir / "input")
    config = load_config("configs/ml-100k.yaml", [
        "data.dataset=null", f"data.input_path={work_dir / 'input'}", f"data.output_dir={work_dir / 'prepared'}",
        f"train.storage_path={work_dir / 'runs'}", f"train.bundle_dir={work_dir / 'bundle'}",
        f"train.use_gpu={str(not cpu_check).lower()}", f"train.precision={'fp32' if cpu_check else 'bf16'}",
        "train.num_workers=1", "train.max_epochs=1", "train.batch_size=256",
    ])
    serve_config = "serve_configs/ml-100k.yaml" if cpu_check else "serve_configs/production.yaml"

    ray.init(num_gpus=0 if cpu_check else 1, include_dashboard=False)
    try:
        prepare_from_config(config.data)
        output = train(config.data.output_dir, config.model, config.train, "gpu-smoke")
        sequences = sum(pq.read_metadata(str(path)).num_rows for path in (work_dir / "prepared" / "train").glob("*.parquet"))
        train_time_s = output.history[0]["train_time_s"]

        user = pq.read_table(str(Path(output.bundle_dir) / "histories.parquet"), columns=["user_id"])["user_id"][0].as_py()
        url = deploy(serve_config, bundle_path=str(output.bundle_dir), port=_free_port())
        try:
            start = time.perf_counter()
            response = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=60)
            latency_ms = (time.perf_counter() - start) * 1000
        finally:
            shutdown()
    finally:
        ray.shutdown()

    response.raise_for_status()
    return {
        "device": "cpu (--cpu-check)" if cpu_check else torch.cuda.get_device_name(0),
        "rows": rows,
        "training_sequences": sequences,
        "epoch_train_time_s": round(train_time_s, 2),
        "sequences_per_s": round(sequences / train_time_s, 1),
        "test_ndcg@10": output.metrics.get("test_ndcg@10"),
        "recommend_status": response.status_code,
        "recommend_latency_ms": round(latency_ms, 1),
        "recommended_items": [item["item_id"] for item in response.json()["items"]],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
