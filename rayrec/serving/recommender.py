"""The recommender deployment: serves the HTTP routes, loads a bundle, swaps it on `user_config` changes, scores in batches."""

# No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.
import asyncio
import logging
import os
import time
from typing import Literal

import torch
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from rayrec.data.privacy import UserIdLookup, user_id_lookup
from rayrec.models.bundle import Bundle, load_bundle
from rayrec.models.explain import explain_ranking
from rayrec.models.quantize import Quantize, quantize_model
from rayrec.models.recommend import Query, popular_items, rank_queries, resolve_query
from rayrec.serving import metrics
from rayrec.serving.http import HEALTHZ_TIMEOUT_S, api, load_auth_token, set_auth_token
from rayrec.serving.schemas import RecommendBatchRequest, RecommendBatchResponse, RecommendRequest, RecommendResponse

logger = logging.getLogger(__name__)

# A batch running longer than this fails Serve's health check, so the controller replaces the replica.
STALLED_BATCH_S = 30.0


def _without_query(location: str) -> str:
    """Drop a URI's query options, which may carry credentials (pyarrow accepts `?secret_key=...`)."""
    return str(location).split("?", 1)[0]


class ModelSource(BaseModel):
    """The Recommender's Serve `user_config`: which bundle to serve. Changing it swaps the model."""

    model_config = ConfigDict(extra="forbid")

    bundle_path: str = Field(description="Bundle directory or pyarrow filesystem URI (s3://, gs://, file://).")
    version: str | None = Field(None, description="Expected bundle version; loading fails if bundle.json differs.")


def pick_device(device: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """Resolve the `device` argument: `auto` means CUDA when this replica has a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("args.device is cuda, but this replica has no GPU; request one with "
                         "ray_actor_options.num_gpus or set args.device to auto.")
    return torch.device(device)


def load_source(source: ModelSource, device: torch.device, quantize: Quantize = "none") -> Bundle:
    """Load and check the bundle named by `source`, with its model quantized as asked and on `device`."""
    bundle = load_bundle(source.bundle_path)
    if source.version is not None and bundle.version != source.version:
        raise ValueError(f"the bundle at {_without_query(source.bundle_path)} has version {bundle.version}, but user_config.version "
                         f"is {source.version}; fix the version or the path.")
    bundle.model = quantize_model(bundle.model, quantize).to(device)
    return bundle


def bundle_user_ids(bundle: Bundle, source: ModelSource, key_file: str | None) -> UserIdLookup:
    """Return how to look up users in `bundle`; a pseudonymised bundle without its key raises."""
    return user_id_lookup(bundle.metadata.get("user_ids"), key_file, f"bundle {_without_query(source.bundle_path)}")



# Defined above the deployment class: Serve's ingress wrapper copies the module globals when it decorates.
def _rank_by_bundle(requests: list[tuple[Bundle, Query]]) -> list[list[tuple[int, float]]]:
    """Rank each query with the bundle it was resolved against; a batch spans two bundles only during a swap."""
    results: list[list[tuple[int, float]] | None] = [None] * len(requests)
    groups: dict[int, list[int]] = {}
    for position, (bundle, _) in enumerate(requests):
        groups.setdefault(id(bundle), []).append(position)

    for positions in groups.values():
        bundle = requests[positions[0]][0]
        ranked = rank_queries(bundle, [requests[p][1] for p in positions])
        for position, row in zip(positions, ranked):
            results[position] = row
    return results


@serve.deployment
@serve.ingress(api)
class Recommender:
    """Serves the HTTP routes and scores batches of queries with one forward pass each.

    Every request is resolved against the bundle that is current when it arrives and is
    scored by that same bundle, so a swap never mixes two vocabularies in one response.
    """

    def __init__(self, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005, torch_threads: int = 1,
                 device: Literal["auto", "cpu", "cuda"] = "auto", quantize: Quantize = "none",
                 user_id_key_file: str | None = None, auth_token_file: str | None = None,
                 auth_token_env: str | None = None):
        torch.set_num_threads(torch_threads)
        self.device = pick_device(device)
        if quantize == "int8" and self.device.type != "cpu":
            raise ValueError(f"args.quantize int8 runs on CPU only, but this replica uses {self.device}; "
                             "set args.quantize to bf16 or none, or args.device to cpu.")
        self.quantize = quantize
        self.user_id_key_file = user_id_key_file
        set_auth_token(load_auth_token(auth_token_file, auth_token_env))
        self.bundle: Bundle | None = None
        self.users = UserIdLookup()
        self.source: ModelSource | None = None
        self.last_load_error: dict | None = None
        self.batch_started_at: float | None = None
        self.stalled_batch_s = STALLED_BATCH_S
        self.swap_lock = asyncio.Lock()
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict) -> None:
        """Load the bundle named in `user_config`; the first load must succeed, later ones may fail safely."""
        async with self.swap_lock:
            if self.bundle is None:
                # Serve keeps the replica out of rotation until this first load returns.
                source = ModelSource.model_validate(user_config)
                bundle = load_source(source, self.device, self.quantize)
                self._activate(bundle, source, bundle_user_ids(bundle, source, self.user_id_key_file))
                return
            await self._swap(user_config)

    async def _swap(self, user_config: dict) -> None:
        # Load in a thread, so this replica keeps serving the old bundle until the new one is ready.
        try:
            source = ModelSource.model_validate(user_config)
            bundle = await asyncio.to_thread(load_source, source, self.device, self.quantize)
            users = bundle_user_ids(bundle, source, self.user_id_key_file)
        except Exception as err:  # noqa: BLE001 - any load failure must leave the old model serving
            location = _without_query(user_config.get("bundle_path"))
            self.last_load_error = {"bundle_path": location, "error": str(err), "at": time.time()}
            metrics.bundle_load_failures().inc()
            logger.error("Failed to load bundle %s: %s; still serving %s", location, err, self.bundle.version)
            return
        self._activate(bundle, source, users)

    def _activate(self, bundle: Bundle, source: ModelSource, users: UserIdLookup) -> None:
        previous = self.bundle
        # Both run on the event loop, so no request sees a new bundle with the old user lookup.
        self.bundle, self.users, self.source, self.last_load_error = bundle, users, source, None
        if previous is not None:
            metrics.model_version().set(0, tags={"version": previous.version})
        metrics.model_version().set(1, tags={"version": bundle.version})
        logger.info("Serving bundle %s from %s on %s, quantize %s (pid %d)", bundle.version,
                    _without_query(source.bundle_path), self.device, self.quantize, os.getpid())

    def metadata(self) -> dict:
        info = {key: self.bundle.metadata.get(key) for key in ("version", "created_at", "dataset", "model", "metrics")}
        info["bundle_path"] = _without_query(self.source.bundle_path)
        info["max_len"] = self.bundle.model.config.max_len
        info["num_items"] = len(self.bundle.item_ids) - 1
        info["last_load_error"] = self.last_load_error
        info["user_ids"] = self.bundle.metadata.get("user_ids")
        info["quantize"] = self.quantize
        return info

    async def healthz(self) -> bool:
        """Score a one-item history through the batch queue, the path real requests take."""
        bundle = self.bundle
        query = Query(history=bundle.popular_items[:1], k=1, exclude=bundle.popular_items[:0])
        ranked = await self.score_batch((bundle, query))
        return len(ranked) == 1 and all(score == score for _, score in ranked)  # NaN != NaN

    def check_health(self) -> None:
        """Called by Serve every few seconds; a stalled batch marks the replica unhealthy."""
        started = self.batch_started_at
        if started is not None and time.monotonic() - started > self.stalled_batch_s:
            raise RuntimeError(f"a batch has been running for more than {self.stalled_batch_s:.0f} s")

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        bundle, users = self.bundle, self.users
        user_id = None if request.user_id is None else users.stored_id(request.user_id)
        query = resolve_query(bundle, user_id, request.history, request.k, request.exclude_seen,
                              request.exclude_items, request.allowed_items)
        self._count_unknowns(query)
        if query.fallback:
            metrics.fallbacks().inc()
            ranked = popular_items(bundle, query)
        else:
            ranked = await self.score_batch((bundle, query))

        items = [{"item_id": bundle.item_ids[index], "score": score} for index, score in ranked]
        if request.explain and not query.fallback:
            reasons = await asyncio.to_thread(explain_ranking, bundle.model, query.history, ranked, bundle.item_ids,
                                              bundle.model.config.max_len)
            for item, item_reasons in zip(items, reasons):
                item["reasons"] = item_reasons
        return RecommendResponse(
            items=items,
            model_version=bundle.version,
            fallback=query.fallback,
            unknown_items=query.unknown_items,
            unknown_user=query.unknown_user,
            truncated=query.truncated,
        )

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score_batch(self, requests: list[tuple[Bundle, Query]]) -> list[list[tuple[int, float]]]:
        metrics.batch_size().observe(len(requests))
        self.batch_started_at = time.monotonic()
        try:
            # The forward pass runs in a thread, so the event loop keeps queueing the next batch meanwhile.
            return await asyncio.to_thread(_rank_by_bundle, requests)
        finally:
            self.batch_started_at = None

    @api.post("/recommend", response_model=RecommendResponse, summary="Recommend")
    async def recommend_route(self, request: RecommendRequest) -> RecommendResponse:
        """Top-k items for one user id or history."""
        return await self.recommend(request)

    @api.post("/recommend/batch", response_model=RecommendBatchResponse, summary="Recommend Batch")
    async def recommend_batch_route(self, batch: RecommendBatchRequest) -> RecommendBatchResponse:
        """Top-k items for several requests; they join this replica's batches together."""
        return RecommendBatchResponse(results=await asyncio.gather(*[self.recommend(r) for r in batch.requests]))

    @api.get("/healthz", summary="Healthz")
    async def healthz_route(self) -> dict:
        """200 when this replica scores a one-item history within a few seconds, else 503."""
        try:
            healthy = await asyncio.wait_for(self.healthz(), HEALTHZ_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.error("Health check failed: no score within %.0f s", HEALTHZ_TIMEOUT_S)
            raise HTTPException(status_code=503, detail=f"the model did not score within {HEALTHZ_TIMEOUT_S:.0f} s")
        if not healthy:
            logger.error("Health check failed: the model returned invalid scores")
            raise HTTPException(status_code=503, detail="the model returned invalid scores")
        return {"status": "ok"}

    @api.get("/model", summary="Model")
    async def model_route(self) -> dict:
        """Version, training date, dataset and metrics of the bundle being served, and the last failed load."""
        return self.metadata()

    @staticmethod
    def _count_unknowns(query: Query) -> None:
        if query.unknown_user:
            metrics.unknown_ids().inc(tags={"kind": "user"})
        if query.unknown_items:
            metrics.unknown_ids().inc(len(query.unknown_items), tags={"kind": "item"})
