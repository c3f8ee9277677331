"""HTTP request and response bodies, validated by pydantic before a request reaches a replica."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from rayrec.models.explain import MAX_EXPLAINED_HISTORY, MAX_REASONS

MAX_K = 1000
MAX_HISTORY_ITEMS = 10_000
MAX_FILTER_ITEMS = 10_000  # per list, for exclude_items and allowed_items
MAX_BATCH_REQUESTS = 256
MAX_BODY_BYTES = 1 << 20  # 1 MiB; larger bodies get 413 before they are parsed

# Raw ids are strings in the vocabulary, because preprocessing reads every id as text. A JSON
# integer is read as its decimal text, so 123 and "123" name the same item or user.
RawId = StrictStr | StrictInt


def _as_text(values: list[RawId] | None) -> list[str] | None:
    return None if values is None else [str(value) for value in values]


class RecommendRequest(BaseModel):
    """Body of `POST /recommend`: a known user, a history of raw item ids, or both."""

    model_config = ConfigDict(extra="forbid")

    user_id: RawId | None = Field(None, description="User whose stored history is used when `history` is absent.")
    history: list[RawId] | None = Field(
        None, max_length=MAX_HISTORY_ITEMS,
        description=(
            "Raw item ids, oldest first. Takes precedence over the stored history of `user_id`. Only the most "
            "recent `max_len` items (a model setting) are scored; `truncated` in the response says when more were sent."
        ),
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description=f"Number of items to return, 1 to {MAX_K}.")
    exclude_seen: StrictBool = Field(True, description="Leave items of the history out of the results.")
    exclude_items: list[RawId] | None = Field(
        None, max_length=MAX_FILTER_ITEMS, description="Raw item ids that must not be returned.",
    )
    allowed_items: list[RawId] | None = Field(
        None, min_length=1, max_length=MAX_FILTER_ITEMS,
        description="When set, only these raw item ids may be returned (a candidate set).",
    )
    explain: StrictBool = Field(
        False,
        description=(
            f"Add `reasons` to each item: up to {MAX_REASONS} history items whose removal lowers the item's score "
            f"most (leave-one-out rescoring of the {MAX_EXPLAINED_HISTORY} most recent history items). Needs at "
            "least two known history items; fallback items get no reasons."
        ),
    )

    @field_validator("user_id")
    @classmethod
    def _user_id_text(cls, value: RawId | None) -> str | None:
        return None if value is None else str(value)

    @field_validator("history")
    @classmethod
    def _history_text(cls, value: list[RawId] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("history must contain at least one item id, or be left out to use user_id.")
        return _as_text(value)

    @field_validator("exclude_items", "allowed_items")
    @classmethod
    def _filter_text(cls, value: list[RawId] | None) -> list[str] | None:
        return _as_text(value)

    @model_validator(mode="after")
    def _user_or_history(self) -> "RecommendRequest":
        if self.user_id is None and self.history is None:
            raise ValueError("set user_id, history, or both.")
        return self


class RecommendBatchRequest(BaseModel):
    """Body of `POST /recommend/batch`: several recommend requests in one call."""

    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(
        min_length=1, max_length=MAX_BATCH_REQUESTS,
        description=f"1 to {MAX_BATCH_REQUESTS} requests, each with the fields of `POST /recommend`.",
    )


class Reason(BaseModel):
    item_id: str = Field(description="A raw item id from the history.")
    weight: float = Field(description="The item's score with the full history minus its score without this history item.")


class ScoredItem(BaseModel):
    item_id: str
    score: float
    reasons: list[Reason] | None = Field(None, description="With `explain: true`: history items by weight, largest first.")


class RecommendResponse(BaseModel):
    items: list[ScoredItem] = Field(description="Recommended raw item ids, best first; fewer than k if the candidates run out.")
    model_version: str
    fallback: bool = Field(description="True when no known history existed and the most popular items were returned.")
    unknown_items: list[str] = Field(description="History ids that are not in the vocabulary and were ignored.")
    unknown_user: bool = Field(False, description="True when `user_id` was used but the bundle has no history for it.")
    truncated: bool = Field(False, description="True when the history was longer than the model's max length.")


class RecommendBatchResponse(BaseModel):
    results: list[RecommendResponse] = Field(description="One response per request, in request order.")
