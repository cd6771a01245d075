"""One class per API, each turning a typed request into a typed response, with no HTTP in
sight (vLLM's ``serving_*.py``): ``ServingClassify`` for vLLM's ``/v1/classify``,
``ServingPredict`` for text-embeddings-inference's ``/predict``, and ``ServedModels``,
which both share: the runs, the request limits, ``/v1/models`` and ``/health``.

A client's mistake raises ``ServingError`` with the HTTP status that says so (404 for an
unknown model, 413 over a limit, 422 for no texts); the server turns it into the error
body. Probabilities, labels and token counts come from the classifier (``served.py``).

Example:
    >>> models = ServedModels({"news": run}, max_texts_per_request=64)  # doctest: +SKIP
    >>> answer = await ServingClassify(models).classify(ClassifyRequest(input="Shares fell"))  # doctest: +SKIP
    >>> answer.data[0].label  # doctest: +SKIP
    'business'
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping

import numpy as np

from llmclf.errors import LlmclfError
from llmclf.serve.protocol import (
    ClassifyData,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyUsage,
    Health,
    LabelScore,
    ModelCard,
    ModelList,
    PredictRequest,
    PredictResponse,
)
from llmclf.serve.served import ServedRun, TextResult


class ServingError(LlmclfError):
    """A request the client can fix, with the HTTP ``status`` that says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ServedModels:
    """The runs being served (the first is the default), the limits every request is
    held to, ``/v1/models`` and ``/health``. ``on_texts`` is told how many texts each
    valid request brought (the server's Prometheus histogram)."""

    def __init__(
        self,
        runs: Mapping[str, ServedRun],
        max_texts_per_request: int = 64,
        max_chars_per_text: int = 100_000,
        on_texts: Callable[[int], None] | None = None,
    ):
        if not runs:
            raise LlmclfError("serve needs at least one RUN")
        self.runs = dict(runs)
        self.max_texts_per_request = max_texts_per_request
        self.max_chars_per_text = max_chars_per_text
        self.on_texts = on_texts

    def pick(self, model: str | None) -> ServedRun:
        """The run named ``model`` (None: the first); 404 for a name not served here."""
        if model is None:
            return next(iter(self.runs.values()))
        if model not in self.runs:
            raise ServingError(
                404, f"model {model!r} is not served here; served: {', '.join(self.runs)}"
            )
        return self.runs[model]

    def texts(self, value: str | list[str]) -> list[str]:
        """The request's texts, within the limits (422 for none, 413 for too many or too
        long)."""
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ServingError(422, "no texts: give a string or a non-empty list")
        if len(texts) > self.max_texts_per_request:
            raise ServingError(
                413,
                f"{len(texts)} texts in one request; at most {self.max_texts_per_request} "
                "(--max-texts-per-request)",
            )
        longest = max(len(t) for t in texts)
        if longest > self.max_chars_per_text:
            raise ServingError(
                413,
                f"a text of {longest} characters; at most {self.max_chars_per_text} "
                "(--max-chars-per-text)",
            )
        if self.on_texts is not None:
            self.on_texts(len(texts))
        return texts

    def model_list(self) -> ModelList:
        return ModelList(data=[model_card(run) for run in self.runs.values()])

    def health(self) -> Health:
        return Health(models=list(self.runs))


def model_card(run: ServedRun) -> ModelCard:
    return ModelCard(
        id=run.name,
        method=run.method,
        classes=run.classes,
        num_classes=len(run.classes),
        multi_label=run.multi_label,
        max_length=run.max_length,
        base_model=run.base_model,
    )


def was_cut(run: ServedRun, result: TextResult | None) -> bool:
    """Whether the text had more tokens than ``run`` reads (its ``input_budget()``)."""
    return result is not None and run.max_length is not None and result.tokens > run.max_length


class ServingClassify:
    """vLLM's classification API: each text's probabilities and most probable ``label``;
    a multi-label run adds ``labels``, the classes its thresholds decide on."""

    def __init__(self, models: ServedModels):
        self.models = models

    async def classify(self, request: ClassifyRequest) -> ClassifyResponse:
        run = self.models.pick(request.model)
        results = await run.results(self.models.texts(request.input))
        return ClassifyResponse(
            id=f"classify-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=run.name,
            data=[self._data(run, index, result) for index, result in enumerate(results)],
            usage=self._usage(run, results),
        )

    @staticmethod
    def _data(run: ServedRun, index: int, result: TextResult | None) -> ClassifyData:
        empty = [] if run.multi_label else None
        if result is None:  # an empty text
            return ClassifyData(
                index=index, label=None, probs=[], num_classes=len(run.classes), labels=empty
            )
        abstained, withheld = None, None
        if run.multi_label:  # label: the top class, as vLLM gives it; labels: the decision
            label, labels = run.classes[int(np.argmax(result.proba))], list(result.labels)
            if run.abstains:
                withheld = [c for c, off in zip(run.classes, result.abstained) if off]
                abstained = bool(withheld)
        else:
            label, labels = result.labels, None
            if run.abstains:
                abstained = bool(result.abstained)
        return ClassifyData(
            index=index,
            label=label,
            probs=[float(p) for p in result.proba],
            num_classes=len(run.classes),
            labels=labels,
            abstained=abstained,
            abstained_labels=withheld,
            parent=result.parent,
        )

    @staticmethod
    def _usage(run: ServedRun, results: list[TextResult | None]) -> ClassifyUsage:
        tokens = sum(r.tokens for r in results if r is not None)
        return ClassifyUsage(
            prompt_tokens=tokens,
            total_tokens=tokens,
            truncated_inputs=sum(was_cut(run, r) for r in results),
            max_length=run.max_length,
        )


class ServingPredict:
    """text-embeddings-inference's predict API: each text's ``{"label", "score"}`` pairs,
    highest score first. ``raw_scores`` gives the logits; ``truncate: false`` refuses a
    text over the run's token limit (413) instead of cutting it."""

    def __init__(self, models: ServedModels):
        self.models = models

    async def predict(self, request: PredictRequest) -> PredictResponse:
        run = self.models.pick(request.model)
        results = await run.results(self.models.texts(request.inputs))
        if request.truncate is False:
            cut = [i for i, result in enumerate(results) if was_cut(run, result)]
            if cut:
                raise ServingError(
                    413,
                    f"input {cut[0]} has {results[cut[0]].tokens} tokens; the model takes "
                    f"{run.max_length} (send truncate: true to cut it)",
                )
        answers = [self._scores(run, result, request.raw_scores) for result in results]
        return PredictResponse(answers[0] if isinstance(request.inputs, str) else answers)

    @staticmethod
    def _scores(run: ServedRun, result: TextResult | None, raw: bool) -> list[LabelScore]:
        if result is None:  # an empty text
            return []
        if raw and result.logits is None:
            raise ServingError(
                422, f"{run.name} has no raw scores (it generates answers): leave raw_scores out"
            )
        scores = result.logits if raw else result.proba
        if not run.abstains:
            withheld = [None] * len(run.classes)
        elif run.multi_label:
            withheld = [bool(off) for off in result.abstained]
        else:  # the decision is the top entry: it carries the mark
            top = int(np.argmax(result.proba))
            withheld = [bool(result.abstained) if j == top else None for j in range(len(scores))]
        parents = [result.parent if off else None for off in withheld]
        rows = sorted(zip(run.classes, scores, withheld, parents), key=lambda row: -float(row[1]))
        return [
            LabelScore(label=label, score=float(score), abstained=off, parent=parent)
            for label, score, off, parent in rows
        ]
