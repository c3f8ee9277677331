"""Baseline for the serving benchmark: a plain FastAPI + uvicorn server scoring one request at a time.

    python benchmarks/plain_fastapi_server.py BUNDLE_DIR PORT

This is what a user would write without rayrec: one process, the same bundle and ranking
code, no batching. The async endpoint runs the model inline, so requests are scored one by one.
"""

import sys

import uvicorn
from fastapi import FastAPI

from rayrec.models.bundle import load_bundle
from rayrec.models.recommend import rank_queries, resolve_query
from rayrec.serving.schemas import RecommendRequest

bundle = load_bundle(sys.argv[1])
app = FastAPI()


@app.post("/recommend")
async def recommend(request: RecommendRequest) -> dict:
    query = resolve_query(bundle, request.user_id, request.history, request.k, request.exclude_seen)
    ranked = rank_queries(bundle, [query])[0]
    return {"items": [{"item_id": bundle.item_ids[index], "score": score} for index, score in ranked],
            "model_version": bundle.version}


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
