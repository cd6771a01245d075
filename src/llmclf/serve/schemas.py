"""Request bodies of the two classification APIs (pydantic: a wrong type is a 422 that
names the field, never a 5xx)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClassifyRequest(BaseModel):
    """vLLM's ``/v1/classify`` (and ``/classify``) body. Fields vLLM has and llmclf does
    not use (``user``, ``priority``, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="a served run's name (default: the first)")
    input: str | list[str] = Field(..., description="one text or a list of texts")


class PredictRequest(BaseModel):
    """text-embeddings-inference's ``/predict`` body."""

    model_config = ConfigDict(extra="allow")

    inputs: str | list[str] = Field(..., description="one text or a list of texts")
    raw_scores: bool = Field(False, description="logits instead of probabilities")
    truncate: bool | None = Field(
        None,
        description="false: refuse a text over the run's token limit (413); "
        "default: cut it, as llmclf predict does",
    )
    model: str | None = Field(None, description="llmclf addition: a served run's name")
