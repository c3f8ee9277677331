"""Deploy a Serve config file from Python, the way `serve run CONFIG` does, with overrides."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

logger = logging.getLogger(__name__)

APP_READY_TIMEOUT_S = 300


def load_serve_config(path: str | Path, bundle_path: str | None = None, port: int | None = None) -> ServeDeploySchema:
    """Read and validate a Serve config; relative bundle paths are resolved against the working directory."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"Serve config not found: {path}") from None
    if port is not None:
        raw.setdefault("http_options", {})["port"] = port

    for app in raw.get("applications", []):
        args = app.setdefault("args", {})
        if bundle_path is not None:
            args["bundle_path"] = bundle_path
        if "bundle_path" in args:
            # Replicas may start in another directory, so they get an absolute path.
            args["bundle_path"] = str(Path(args["bundle_path"]).expanduser().resolve())
    return ServeDeploySchema.model_validate(raw)


def deploy(path: str | Path, bundle_path: str | None = None, port: int | None = None) -> str:
    """Deploy every application of the config, wait until healthy, and return the base URL."""
    from ray.serve._private.api import serve_start  # NOTE: private API, as used by `serve run` in Ray 2.60

    config = load_serve_config(path, bundle_path, port)
    client = serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=False)

    url = f"http://{config.http_options.host}:{config.http_options.port}"
    _wait_until_ready(url, [app.name for app in config.applications])
    logger.info("Serve applications %s are running at %s", [app.name for app in config.applications], url)
    return url


def _wait_until_ready(url: str, app_names: list[str]) -> None:
    deadline = time.monotonic() + APP_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        statuses = serve.status().applications
        failed = {name: statuses[name].message for name in app_names
                  if name in statuses and statuses[name].status in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve deployment failed: {failed}")
        if all(name in statuses and statuses[name].status == "RUNNING" for name in app_names) and _healthy(url):
            return
        time.sleep(1.0)
    raise RuntimeError(f"Serve applications {app_names} were not healthy at {url}/healthz after {APP_READY_TIMEOUT_S} s.")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("Interrupted; shutting down Serve")
        shutdown()


def shutdown() -> None:
    serve.shutdown()
