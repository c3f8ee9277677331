"""The HTTP layer of the Serve app: the FastAPI object, an optional bearer-token check, a body-size
limit, metrics and error bodies.

The recommender deployment declares its routes on `api`; this module contains what wraps them.
"""

import hmac
import logging
import os
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rayrec.serving import metrics
from rayrec.serving.schemas import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

HEALTHZ_TIMEOUT_S = 5.0
REQUEST_LOG_INTERVAL_S = 60.0
ROUTES = ("/recommend", "/recommend/batch", "/healthz", "/model", "/docs", "/openapi.json")
# Load balancers probe /healthz without credentials, and it returns only {"status": "ok"}.
OPEN_ROUTES = ("/healthz",)
MIN_TOKEN_CHARS = 16
_AUTH_TOKEN: dict[str, bytes | None] = {"token": None}


def load_auth_token(token_file: str | None, token_env: str | None) -> str | None:
    """Return the bearer token from `token_file` or the environment variable `token_env`, or None when neither is set."""
    if token_file is not None:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as err:
            raise ValueError(f"args.auth_token_file {token_file} cannot be read ({err.strerror}); fix the path "
                             "or its permissions.") from None
        where = f"args.auth_token_file {token_file}"
    elif token_env is not None:
        token = os.environ.get(token_env, "").strip()
        where = f"environment variable {token_env} (args.auth_token_env)"
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{where} contains a token of {len(token)} characters; use at least {MIN_TOKEN_CHARS}, "
                         "for example the output of `openssl rand -hex 32`.")
    return token


def set_auth_token(token: str | None) -> None:
    """Require `Authorization: Bearer <token>` on every route but OPEN_ROUTES in this process; None turns it off."""
    _AUTH_TOKEN["token"] = None if token is None else token.encode()


def _authorized(scope) -> bool:
    token = _AUTH_TOKEN["token"]
    if token is None or scope.get("path", "") in OPEN_ROUTES:
        return True
    headers = dict(scope.get("headers") or [])
    scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
    # compare_digest takes the same time wherever the first differing byte is.
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


class BodyLimitAndMetrics:
    """ASGI middleware: check the bearer token (401), reject bodies over MAX_BODY_BYTES (413), record metrics."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if not _authorized(scope):
                response = JSONResponse(status_code=401, content={"detail": "missing or invalid bearer token"},
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_and_record)
                return
            body, too_large = await _read_body(receive, MAX_BODY_BYTES)
            if too_large:
                response = JSONResponse(status_code=413, content={"detail": (
                    f"request body is larger than {MAX_BODY_BYTES} bytes; send fewer or shorter lists, "
                    "or split a batch into several calls.")})
                await response(scope, receive, send_and_record)
                return
            await self.app(scope, _replay(body, receive), send_and_record)
        finally:
            # Unknown paths share one label, so random URLs cannot create unbounded metric series.
            path = scope.get("path", "") if scope.get("path", "") in ROUTES else "other"
            if status["code"] >= 500:
                logger.error("%s %s returned status %d", scope.get("method"), path, status["code"])
            metrics.http_requests().inc(tags={"path": path, "status": str(status["code"])})
            metrics.http_latency_ms().observe((time.perf_counter() - start) * 1000, tags={"path": path})
            _REQUEST_LOG.record(status["code"])


async def _read_body(receive, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes, receive):
    """Hand the buffered body to the app once, then pass later messages (a disconnect) through."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class RequestLog:
    """Count responses by status and log the counts at most once per interval."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.counts: dict[int, int] = {}
        self.last_logged = time.monotonic()

    def record(self, status: int) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        now = time.monotonic()
        if now - self.last_logged >= self.interval_s:
            logger.info("Requests by status since the last report: %s", dict(sorted(self.counts.items())))
            self.counts, self.last_logged = {}, now


_REQUEST_LOG = RequestLog(REQUEST_LOG_INTERVAL_S)

api = FastAPI(
    title="rayrec",
    description=(
        "Next-item recommendations from a SASRec model trained with rayrec. "
        f"Request bodies are limited to {MAX_BODY_BYTES} bytes."
    ),
)
api.add_middleware(BodyLimitAndMetrics)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    # The default handler echoes the rejected input, which can be a user's whole history.
    detail = [{"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
              for error in err.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


