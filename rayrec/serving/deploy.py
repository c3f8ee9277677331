"""Load, check and deploy Serve config files, the way `serve run CONFIG` does, with overrides.

Serve itself checks the types in a config. `check_rayrec_app` adds the rules that matter
for this application: batches must be able to fill, and autoscaling must be able to scale up.

NOTE: `serve run` and `serve deploy` skip these deployment-level checks (they see only
`args`, which `build_app` validates); run `rayrec serve --check --config FILE` first.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import httpx
import yaml
from pydantic import ValidationError
from ray import serve
from ray.serve._private.constants import DEFAULT_MAX_ONGOING_REQUESTS, DEFAULT_TARGET_ONGOING_REQUESTS
from ray.serve._private.utils import DEFAULT
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from rayrec.serving.app import AppArgs
from rayrec.serving.recommender import ModelSource

logger = logging.getLogger(__name__)

APP_READY_TIMEOUT_S = 300
RAYREC_IMPORT_PATH = "rayrec.serving.app:build_app"
DEPLOYMENTS = ("Recommender",)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeConfigError(ValueError):
    """A Serve config that would deploy but not work as intended."""


def load_serve_config(path: str | Path, bundle_path: str | None = None, port: int | None = None,
                      check_bundle: bool = True) -> ServeDeploySchema:
    """Read, override and check a Serve config; local bundle paths are made absolute.

    `check_bundle` also requires local bundle paths to exist on this machine, which holds for
    `rayrec serve` but not for a config deployed to a cluster whose nodes hold the bundle.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"Serve config not found: {path}") from None
    if not isinstance(raw, dict):
        raise ServeConfigError(f"{path}: expected a mapping with `applications:`, got {type(raw).__name__}.")
    if port is not None:
        raw.setdefault("http_options", {})["port"] = port

    for app in raw.get("applications") or []:
        if app.get("import_path") == RAYREC_IMPORT_PATH:
            _apply_bundle_path(app, bundle_path, check_bundle, path)

    try:
        config = ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        raise ServeConfigError(f"{path}: invalid Serve config: {err}") from None

    for app in config.applications:
        if app.import_path == RAYREC_IMPORT_PATH:
            check_rayrec_app(app, str(path))
    if config.http_options.host not in LOOPBACK_HOSTS:
        logger.warning("%s binds HTTP to %s, not loopback: put an authenticating gateway in front of it.",
                       path, config.http_options.host)
    return config


def _apply_bundle_path(app: dict, bundle_path: str | None, check_bundle: bool, path: str | Path) -> None:
    recommender = _deployment(app, "Recommender")
    user_config = recommender.setdefault("user_config", {}) or {}
    recommender["user_config"] = user_config
    if bundle_path is not None:
        user_config["bundle_path"] = bundle_path
        user_config.pop("version", None)  # a version pinned in the file belongs to the file's bundle

    location = user_config.get("bundle_path")
    if location is None or "://" in str(location):
        return
    # Replicas may start in another directory, so they get an absolute path.
    local = Path(location).expanduser().resolve()
    user_config["bundle_path"] = str(local)
    if check_bundle and not (local / "bundle.json").exists():
        raise FileNotFoundError(
            f"{path}: application {app.get('name', 'default')}: no rayrec bundle at {local} "
            "(deployments.Recommender.user_config.bundle_path); train one with `rayrec train` or pass --bundle."
        )


def _deployment(app: dict, name: str) -> dict:
    deployments = app.setdefault("deployments", [])
    for deployment in deployments:
        if deployment.get("name") == name:
            return deployment
    deployments.append({"name": name})
    return deployments[-1]


def check_rayrec_app(app: ServeApplicationSchema, source: str) -> None:
    """Raise ServeConfigError for settings of the rayrec application that cannot work."""
    where = f"{source}: application {app.name}"
    try:
        args = AppArgs(**(app.args or {}))
    except ValidationError as err:
        raise ServeConfigError(f"{where}: invalid args: {err}") from None

    names = [deployment.name for deployment in app.deployments]
    unknown = sorted(set(names) - set(DEPLOYMENTS))
    if unknown:
        raise ServeConfigError(f"{where}: unknown deployment(s) {unknown}; this application has {list(DEPLOYMENTS)}.")

    for deployment in app.deployments:
        if deployment.name == "Recommender":
            _check_recommender(deployment, args, f"{where}, deployment Recommender")


def _check_recommender(deployment, args: AppArgs, where: str) -> None:
    try:
        ModelSource.model_validate(deployment.user_config or {})
    except ValidationError as err:
        raise ServeConfigError(f"{where}: invalid user_config (set bundle_path to a bundle directory or URI): {err}") from None

    max_ongoing = _option(deployment, "max_ongoing_requests", DEFAULT_MAX_ONGOING_REQUESTS)
    if max_ongoing < args.max_batch_size:
        raise ServeConfigError(
            f"{where}: max_ongoing_requests ({max_ongoing}) is below args.max_batch_size ({args.max_batch_size}), "
            f"so batches can never fill; set max_ongoing_requests to at least {args.max_batch_size}."
        )

    autoscaling = _option(deployment, "autoscaling_config", None)
    if not autoscaling:
        return
    autoscaling = autoscaling if isinstance(autoscaling, dict) else autoscaling.model_dump()
    target = autoscaling.get("target_ongoing_requests") or DEFAULT_TARGET_ONGOING_REQUESTS
    if target >= max_ongoing:
        raise ServeConfigError(
            f"{where}: autoscaling_config.target_ongoing_requests ({target}) must be below max_ongoing_requests "
            f"({max_ongoing}), or a replica never reports more load than the target and replicas never scale up."
        )
    low, high = autoscaling.get("min_replicas", 1), autoscaling.get("max_replicas", 1)
    if low > high:
        raise ServeConfigError(f"{where}: autoscaling_config.min_replicas ({low}) is above max_replicas ({high}).")


def _option(deployment, name: str, default):
    value = getattr(deployment, name, None)
    # Serve marks options left out of the file with DEFAULT.VALUE (Ray 2.60 private API).
    return default if value is None or value is DEFAULT.VALUE else value


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
    health = "not checked"
    while time.monotonic() < deadline:
        statuses = serve.status().applications
        failed = {name: statuses[name].message for name in app_names
                  if name in statuses and statuses[name].status in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve deployment failed: {failed}")
        if all(name in statuses and statuses[name].status == "RUNNING" for name in app_names):
            health = _health(url)
            if health == "200":
                return
        time.sleep(1.0)
    raise RuntimeError(f"Serve applications {app_names} were not healthy at {url}/healthz after "
                       f"{APP_READY_TIMEOUT_S} s (last answer: {health}); see the replica logs under "
                       "/tmp/ray/session_latest/logs/serve/.")


def _health(url: str) -> str:
    """Return the status code of GET /healthz, or the connection error, as text."""
    try:
        return str(httpx.get(f"{url}/healthz", timeout=10).status_code)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"


def wait_forever() -> None:
    """Block until Ctrl+C or SIGTERM, then shut Serve down."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("Interrupted; shutting down Serve")
        shutdown()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def shutdown() -> None:
    serve.shutdown()
