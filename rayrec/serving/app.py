"""Ray Serve application: a FastAPI ingress in front of batched recommender replicas.

Deploy it with `rayrec serve`, `serve run serve_configs/ml-100k.yaml` or `serve deploy`.
The ingress validates each request, so only well-formed queries join a batch in the
recommender, and a bad request can never fail the others in its batch.
"""


import asyncio
import logging
import time
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec.serving import metrics
from rayrec.serving.recommender import Recommender
from rayrec.serving.schemas import (
    MAX_BODY_BYTES,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendRequest,
    RecommendResponse,
)

logger = logging.getLogger(__name__)

HEALTHZ_TIMEOUT_S = 5.0
REQUEST_LOG_INTERVAL_S = 60.0
ROUTES = ("/recommend", "/recommend/batch", "/healthz", "/model", "/docs", "/openapi.json")


class AppArgs(BaseModel):
    """Arguments of `build_app`, set under `args:` in a Serve config file.

    The bundle to serve is not an argument: it is the Recommender's `user_config`, so it can
    change without a redeploy.
    """

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest number of requests scored in one forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=1.0, description="Maximum wait for a batch to fill, in seconds.")
    torch_threads: int = Field(1, ge=1, le=256, description="Intra-op threads per recommender replica.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where replicas run the model; auto picks CUDA when the replica has a GPU.")


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
                logger.error("%s %s answered %d", scope.get("method"), path, status["code"])
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


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front door: validates requests and forwards them to the recommender replicas."""

    def __init__(self, recommender: DeploymentHandle):
        self.recommender = recommender

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        """Top-k items for one user id or history."""
        return await self.recommender.recommend.remote(request)

    @api.post("/recommend/batch", response_model=RecommendBatchResponse)
    async def recommend_batch(self, batch: RecommendBatchRequest) -> RecommendBatchResponse:
        """Top-k items for several requests; each is routed on its own, so they share replica batches."""
        responses = [self.recommender.recommend.remote(request) for request in batch.requests]
        return RecommendBatchResponse(results=await asyncio.gather(*responses))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """200 when a recommender replica scores a one-item history within a few seconds, else 503."""
        response = self.recommender.healthz.remote()

        async def answer() -> bool:
            return await response

        try:
            healthy = await asyncio.wait_for(answer(), HEALTHZ_TIMEOUT_S)
        except asyncio.TimeoutError:
            response.cancel()
            logger.error("Health check failed: no answer from the recommender within %.0f s", HEALTHZ_TIMEOUT_S)
            raise HTTPException(status_code=503, detail=f"the recommender did not answer within {HEALTHZ_TIMEOUT_S:.0f} s")
        if not healthy:
            logger.error("Health check failed: the model returned invalid scores")
            raise HTTPException(status_code=503, detail="the model returned invalid scores")
        return {"status": "ok"}

    @api.get("/model")
    async def model(self) -> dict:
        """Version, training date, dataset and metrics of the bundle being served, and the last failed load."""
        return await self.recommender.metadata.remote()


def build_app(args: dict) -> serve.Application:
    """Build the application from the `args:` mapping of a Serve config file."""
    app_args = AppArgs(**args)
    recommender = Recommender.bind(app_args.max_batch_size, app_args.batch_wait_timeout_s, app_args.torch_threads,
                                   app_args.device)
    return Ingress.bind(recommender)
