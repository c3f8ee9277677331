"""Ray Serve application: a FastAPI ingress in front of batched recommender replicas.

Deploy it with `serve run serve_configs/ml-100k.yaml` or `rayrec serve`. The ingress
validates each request, so only well-formed queries join a batch in the recommender.
"""

import logging
import os
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec.models.bundle import Bundle, load_bundle
from rayrec.models.recommend import Query, popular_items, rank_queries, resolve_query
from rayrec.serving.schemas import RecommendRequest, RecommendResponse

logger = logging.getLogger(__name__)


class AppArgs(BaseModel):
    """Arguments of `build_app`, set under `args:` in a Serve config file."""

    bundle_path: str = Field(description="Bundle directory written by `rayrec train`; absolute, or relative to the working directory.")
    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest number of requests scored in one forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=1.0, description="Maximum wait for a batch to fill, in seconds.")
    torch_threads: int = Field(1, ge=1, description="Intra-op threads per recommender replica.")

    @field_validator("bundle_path")
    @classmethod
    def _bundle_exists(cls, value: str) -> str:
        path = Path(value).expanduser().resolve()
        if not (path / "bundle.json").exists():
            raise ValueError(f"no rayrec bundle at {path}; train one with `rayrec train` or fix args.bundle_path.")
        return str(path)


@serve.deployment
class Recommender:
    """Loads a bundle and scores batches of queries with one forward pass each."""

    def __init__(self, bundle_path: str, max_batch_size: int, batch_wait_timeout_s: float, torch_threads: int):
        torch.set_num_threads(torch_threads)
        self.bundle: Bundle = load_bundle(bundle_path)
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        logger.info("Loaded bundle %s from %s (pid %d)", self.bundle.version, bundle_path, os.getpid())

    def metadata(self) -> dict:
        return {key: self.bundle.metadata[key] for key in ("version", "created_at", "dataset", "model", "metrics")}

    def healthz(self) -> bool:
        """Run a one-item forward pass, so a replica with a broken model fails the check."""
        logits = self.bundle.model.score_last(torch.ones((1, 1), dtype=torch.int64))
        return bool(torch.isfinite(logits[0, 1:]).all())

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        query = resolve_query(self.bundle, request.user_id, request.history, request.k, request.exclude_seen)
        if query.fallback:
            ranked = popular_items(self.bundle, query)
        else:
            ranked = await self.score_batch(query)

        items = [{"item_id": self.bundle.item_ids[index], "score": score} for index, score in ranked]
        return RecommendResponse(items=items, model_version=self.bundle.version, fallback=query.fallback,
                                 unknown_items=query.unknown_items)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score_batch(self, queries: list[Query]) -> list[list[tuple[int, float]]]:
        return rank_queries(self.bundle, queries)


api = FastAPI(
    title="rayrec",
    description="Next-item recommendations from a SASRec model trained with rayrec.",
)


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front door: validates requests and forwards them to the recommender replicas."""

    def __init__(self, recommender: DeploymentHandle):
        self.recommender = recommender

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        return await self.recommender.recommend.remote(request)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        healthy = await self.recommender.healthz.remote()
        if not healthy:
            logger.error("Health check failed: the model returned non-finite scores")
            raise HTTPException(status_code=503, detail="the model returned non-finite scores")
        return {"status": "ok"}

    @api.get("/model")
    async def model(self) -> dict:
        return await self.recommender.metadata.remote()


def build_app(args: dict) -> serve.Application:
    """Build the application from the `args:` mapping of a Serve config file."""
    app_args = AppArgs(**args)
    recommender = Recommender.bind(app_args.bundle_path, app_args.max_batch_size, app_args.batch_wait_timeout_s,
                                   app_args.torch_threads)
    return Ingress.bind(recommender)
