"""HTTP request and response bodies, validated by pydantic before a request reaches a replica."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

MAX_K = 1000
MAX_HISTORY_ITEMS = 10_000

# Raw ids are strings in the vocabulary; JSON integers are accepted and read as their decimal text.
RawId = StrictStr | StrictInt


class RecommendRequest(BaseModel):
    """Body of `POST /recommend`: a known user, a history of raw item ids, or both."""

    model_config = ConfigDict(extra="forbid")

    user_id: RawId | None = Field(None, description="User whose stored history is used when `history` is absent.")
    history: list[RawId] | None = Field(
        None, max_length=MAX_HISTORY_ITEMS,
        description="Raw item ids, oldest first. Takes precedence over the stored history of `user_id`.",
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description=f"Number of items to return, 1 to {MAX_K}.")
    exclude_seen: StrictBool = Field(True, description="Leave items of the history out of the results.")

    @field_validator("user_id")
    @classmethod
    def _user_id_text(cls, value: RawId | None) -> str | None:
        return None if value is None else str(value)

    @field_validator("history")
    @classmethod
    def _history_text(cls, value: list[RawId] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("history must contain at least one item id, or be left out to use user_id.")
        return None if value is None else [str(item) for item in value]

    @model_validator(mode="after")
    def _user_or_history(self) -> "RecommendRequest":
        if self.user_id is None and self.history is None:
            raise ValueError("set user_id, history, or both.")
        return self


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem] = Field(description="Recommended raw item ids, best first; fewer than k if the catalog runs out.")
    model_version: str
    fallback: bool = Field(description="True when no known history existed and the most popular items were returned.")
    unknown_items: list[str] = Field(description="History ids that are not in the vocabulary and were ignored.")
