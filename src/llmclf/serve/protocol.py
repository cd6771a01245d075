"""Every request and response body of the server, as pydantic models: vLLM's
classification API (``/v1/classify``, ``/classify``), text-embeddings-inference's
``/predict``, ``/v1/models``, ``/health`` and the error body.

A request of the wrong shape is a 422 that names the field, never a 5xx. The responses are
what goes on the wire, field for field; ``docs/serving.md`` shows them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_serializer

# ---------------------------------------------------------------------------------------
# vLLM: /v1/classify and /classify
# ---------------------------------------------------------------------------------------


class ClassifyRequest(BaseModel):
    """vLLM's ``/v1/classify`` (and ``/classify``) body. Fields vLLM has and llmclf does
    not use (``user``, ``priority``, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="a served run's name (default: the first)")
    input: str | list[str] = Field(..., description="one text or a list of texts")


class ClassifyData(BaseModel):
    """One text's answer. An empty text gets ``label`` null and ``probs`` []
    (``llmclf predict``'s empty row)."""

    index: int
    label: str | None = Field(description="the most probable class")
    probs: list[float] = Field(description="one probability per class, in the run's order")
    num_classes: int
    labels: list[str] | None = Field(
        None, description="multi-label runs only: every class decided on (at its threshold)"
    )
    abstained: bool | None = Field(
        None,
        description="runs that abstain (--abstain-below) only: true when the answer is "
        "withheld; then label is null (multi-label: labels leaves out the withheld ones)",
    )
    abstained_labels: list[str] | None = Field(
        None, description="multi-label runs that abstain only: the classes withheld"
    )
    parent: str | None = Field(
        None,
        description="runs with --label-hierarchy that abstain only: where the answer is "
        "withheld, the deepest parent of the top class that the run is still sure of",
    )

    @model_serializer(mode="wrap")
    def _without_fields_the_run_has_not(self, handler):
        data = handler(self)
        for name in ("labels", "abstained", "abstained_labels", "parent"):
            if getattr(self, name) is None:
                data.pop(name, None)
        return data


class ClassifyUsage(BaseModel):
    """vLLM's usage block; ``truncated_inputs`` and ``max_length`` are llmclf's: how many
    texts had more tokens than the run reads, and that limit."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None
    truncated_inputs: int
    max_length: int | None


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassifyData]
    usage: ClassifyUsage


# ---------------------------------------------------------------------------------------
# text-embeddings-inference: /predict
# ---------------------------------------------------------------------------------------


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


class LabelScore(BaseModel):
    label: str
    score: float
    abstained: bool | None = Field(
        None,
        description="runs that abstain (--abstain-below) only: true on the top entry of a "
        "text whose answer is withheld (multi-label: on each withheld class)",
    )
    parent: str | None = Field(
        None,
        description="runs with --label-hierarchy that abstain only: on the withheld top "
        "entry, the deepest parent of its class that the run is still sure of",
    )

    @model_serializer(mode="wrap")
    def _plain_unless_withheld(self, handler):
        data = handler(self)
        for name in ("abstained", "parent"):
            if getattr(self, name) is None:
                data.pop(name, None)
        return data


class PredictResponse(RootModel[list[LabelScore] | list[list[LabelScore]]]):
    """One text: its ``[{"label", "score"}]`` sorted by score, highest first; a list of
    texts: a list of those. An empty text gets ``[]``."""


# ---------------------------------------------------------------------------------------
# The service: /v1/models, /health, errors
# ---------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    """One served run, as ``/v1/models`` lists it."""

    id: str
    object: Literal["model"] = "model"
    owned_by: Literal["llmclf"] = "llmclf"
    method: str
    classes: list[str]
    num_classes: int
    multi_label: bool
    max_length: int | None = Field(
        description="the most tokens of one input the run reads (an instruct run: of its "
        "prompt); null: no limit (TF-IDF)"
    )
    base_model: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]


class ErrorInfo(BaseModel):
    message: str
    type: str = "invalid_request_error"
    code: int


class ErrorResponse(BaseModel):
    """OpenAI / vLLM style: ``{"error": {"message", "type", "code"}}``.

    Example:
        >>> ErrorResponse.of(404, "model 'x' is not served here").model_dump()["error"]["code"]
        404
    """

    error: ErrorInfo

    @classmethod
    def of(cls, status: int, message: str) -> ErrorResponse:
        return cls(error=ErrorInfo(message=message, code=status))
