"""The HTTP layer of the Serve app: the FastAPI object, a body-size limit, metrics and error bodies.

The recommender deployment declares its routes on `api`; this module contains what wraps them.
"""

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rayrec.serving import metrics
from rayrec.serving.schemas import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

HEALTHZ_TIMEOUT_S = 5.0
REQUEST_LOG_INTERVAL_S = 60.0
ROUTES = ("/recommend", "/recommend/batch", "/healthz", "/model", "/docs", "/openapi.json")


class BodyLimitAndMetrics:
    """ASGI middleware: reject bodies over MAX_BODY_BYTES with 413 and record status and latency metrics."""

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


