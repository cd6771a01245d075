"""Approach 2: instruction-tune a causal LM to answer a prompt with the label words.

Each example becomes prompt -> answer (``prompts.py``); LoRA adapters (PEFT, task type
CAUSAL_LM) learn the answer with the loss on its tokens only. Predictions either score
every label's answer after one pass over the prompt (``predict_mode="score"``, with
probabilities) or generate greedily and parse the answer (``"generate"``, the paper's way).
A saved run is a plain PEFT causal-LM adapter plus a tokenizer carrying the chat template
used; ``docs/instruct.md`` explains the scheme.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import llmclf.backbone as backbone
from llmclf.batching import forward_overhead_tokens, run_batches
from llmclf.config import (
    POSITIVE,
    AdapterConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    field_names,
    option,
    section,
    threshold_option,
    validate,
)
from llmclf.distributed import unwrap
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.long_text import LongTextConfig, check_long_text
from llmclf.methods.base import ClassifierBase, Prediction
from llmclf.methods.instruct.batches import (
    IGNORE_INDEX,
    InstructCollator,
    answer_logits,
    answer_loss,
    join_prefix,
    label_sets,
)
from llmclf.methods.instruct.prompts import PromptFormat, chat_template_for, read_template
from llmclf.methods.instruct.scoring import (
    SharedPrefix,
    encode_prefix,
    greedy_answers,
    label_set_posteriors,
    score_labels,
    shared_prefix,
)
from llmclf.methods.instruct.verbalizer import AnswerParser, Verbalizer, ambiguity_warnings
from llmclf.run_folder import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    INSTRUCT_STATE,
    check_json_file,
    check_safetensors,
    check_tokenizer,
    damaged,
    read_json,
    write_json,
)
from llmclf.training import train_model

log = logging.getLogger("llmclf")

# A membership probability of exactly 0 or 1 has no finite logit.
_PROBABILITY_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


@dataclass
class InstructConfig:
    """Approach 2: the model answers a prompt with the label words (see docs/instruct.md)."""

    prompt_template: str | None = option(
        None,
        "a text file holding the prompt, with {text} (the text) and {labels} (the allowed "
        "answers) fields; default: a built-in instruction",
    )
    chat_template: str = option(
        "auto",
        "wrap the prompt in the tokenizer's chat template: auto = when it has one; "
        "off = llmclf's plain 'prompt / Answer: label' format",
        choices=("auto", "on", "off"),
    )
    verbalizer: str = option(
        "names",
        "the words each label is answered with: names (the label strings), letters (A, B, ...), "
        "numbers (1, 2, ...), or a JSON / YAML file mapping each label to its words",
    )
    predict_mode: str = option(
        "score",
        "score = log-likelihood of every label's answer, one prompt pass, with probabilities; "
        "generate = greedy decoding, then parsing the answer (the paper's way)",
        choices=("score", "generate"),
        predict_time=True,
    )
    score_normalization: str = option(
        "sum",
        "score mode: sum = log-probability of the whole answer (softmax = the model's "
        "probability restricted to the labels); mean = per-token average (no length bias)",
        choices=("sum", "mean"),
        predict_time=True,
    )
    max_new_tokens: int | None = option(
        None,
        "generate mode: answer length limit in tokens (none: the longest answer + 16)",
        bound=POSITIVE,
        predict_time=True,
    )
    share_prompt_prefix: bool = option(
        True,
        "run the tokens every prompt starts with (system turn, instructions, label list) once "
        "per training batch and once per scoring call instead of once per text; the same "
        "numbers, less compute",
        predict_time=True,
    )
    multi_label_beam: int = option(
        8,
        "multi-label score mode: per-label probabilities come from this many most probable "
        "label sets (a beam search over the answer)",
        bound=POSITIVE,
        predict_time=True,
    )
    threshold: str = threshold_option()

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class InstructClassifierConfig(MethodConfig):
    """Every option of ``InstructClassifier``, by section (the sections of config.yaml)."""

    model: ModelConfig = section(ModelConfig)
    adapter: AdapterConfig = section(AdapterConfig)
    train: TrainConfig = section(TrainConfig)
    instruct: InstructConfig = section(InstructConfig)
    long_text: LongTextConfig = section(LongTextConfig)

    def __post_init__(self) -> None:
        check_long_text(self.long_text, self.model.max_length)
        if self.adapter.lora == "none":
            raise LlmclfError(
                "--lora none (frozen features, head only) is for --method head: the instruct "
                "approach learns through its LoRA adapters"
            )


# ---------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------


class InstructClassifier(ClassifierBase):
    """A causal LM that answers a classification prompt with the label words.

    Options are the fields of ``ModelConfig``, ``AdapterConfig``, ``TrainConfig`` and
    ``InstructConfig`` (the CLI flags, with underscores).

    Example:
        >>> clf = InstructClassifier("smollm2-135m", epochs=2, max_length=256)  # doctest: +SKIP
        >>> clf.fit(texts, labels).predict(["Shares fell sharply on Monday"])  # doctest: +SKIP
        ['business']
        >>> InstructClassifier("smollm2-135m").zero_shot(["business", "sport"])  # doctest: +SKIP
    """

    method = "instruct"
    config_class = InstructClassifierConfig
    long_text_modes = ("truncate", "head-tail")  # a prompt is one window: no chunks
    supports_int8 = True
    serve_overrides = {"predict_mode": "score"}  # probabilities, nothing to parse
    # what `llmclf evaluate --zero-shot` takes: the untrained model and how it is prompted
    zero_shot_options = ("model", "quantize", "max_length", *field_names(InstructConfig))

    # -- setting up prompts and model --------------------------------------------------

    def _prepare(
        self,
        schema: LabelSchema,
        template: str,
        verbalizer: Verbalizer,
        answer_length: int | None = None,
        sets: list[tuple[int, ...]] | None = None,
    ) -> None:
        """Prompt format and answer budget for ``schema``'s classes. ``answer_length`` is
        the longest answer the prompts leave room for; None: the longest of the training
        label ``sets``, or of all labels together when there are none (zero-shot)."""
        model_cfg = self.config_.model
        self.multi_label_ = schema.multi_label
        self.verbalizer_ = verbalizer
        self.format_ = PromptFormat(
            self.tokenizer_, template, verbalizer.words, verbalizer.labels_text()
        )
        if answer_length is None:
            if sets is None:
                sets = [tuple(range(len(verbalizer.words)))] if schema.multi_label else []
            answer_length = self._answer_length(sets)
        self.answer_length_ = answer_length
        self.format_.check_room(model_cfg.max_length, answer_length)
        self.placement_ = backbone.placement_for(model_cfg, backbone.model_source(model_cfg.model))
        self.device_, self.dtype_ = self.placement_.device, self.placement_.dtype

    def _answer_length(self, sets: list[tuple[int, ...]]) -> int:
        """Tokens of the longest answer among single labels and ``sets``."""
        pieces = self.format_.pieces
        singles = [(j,) for j in range(len(pieces.first))]
        return max(len(pieces.complete(s)) for s in [*singles, *sets])

    def _new_format(self, schema: LabelSchema, sets: list[tuple[int, ...]] | None = None) -> None:
        """Tokenizer, chat template, verbalizer and template from the options; warns when
        two answers could be confused."""
        model_cfg, instruct_cfg = self.config_.model, self.config_.instruct
        self.tokenizer_ = backbone.load_tokenizer(
            backbone.model_source(model_cfg.model),
            "left",
            trust_remote_code=model_cfg.trust_remote_code,
        )
        self.tokenizer_.chat_template = chat_template_for(
            self.tokenizer_, instruct_cfg.chat_template
        )
        verbalizer = Verbalizer.build(instruct_cfg.verbalizer, schema.classes)
        template = read_template(instruct_cfg.prompt_template, schema.multi_label)
        self._prepare(schema, template, verbalizer, sets=sets)
        pieces = self.format_.pieces
        for problem in ambiguity_warnings(
            verbalizer.words,
            pieces.first,
            pieces.end,
            self.tokenizer_.unk_token_id,
            schema.multi_label,
        ):
            log.warning("ambiguous answers: %s", problem)

    def _load_base(self):
        from transformers import AutoModelForCausalLM

        model_cfg = self.config_.model
        # 4-bit: an explicit skip list replaces bitsandbytes' default, so name the output
        # layer; unquantized, leave it (and the embedding tied to it) in the compute dtype.
        keep = ["lm_head"] if model_cfg.quantize == "4bit" else []
        return backbone.load_model(
            AutoModelForCausalLM,
            backbone.model_source(model_cfg.model),
            model_cfg,
            self.placement_,
            keep,
        )

    # -- training ----------------------------------------------------------------------

    def _fit(
        self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir: Path | None
    ):
        config = self.config_
        torch.manual_seed(config.train.seed)
        sets = label_sets(schema, labels)
        self._new_format(schema, sets)
        self.model_ = backbone.add_lora(self._load_base(), config.adapter, "CAUSAL_LM")

        train_set = self._answer_dataset(texts, sets)
        eval_set = (
            self._prompt_dataset(eval_texts, schema.encode(eval_labels)) if eval_texts else None
        )
        collator = InstructCollator(
            self.tokenizer_.pad_token_id,
            schema.multi_label,
            share_prefix=config.instruct.share_prompt_prefix,
        )
        self.train_result_ = train_model(
            self.model_,
            train_set,
            eval_set,
            collator,
            forward=self._trainer_forward,
            loss=self._trainer_loss,
            schema=schema,
            config=config.train,
            output_dir=output_dir,
            device=self.device_,
            dtype=self.dtype_,
            progress=self.progress,
        )
        self.model_ = backbone.merge_for_inference(self.model_).eval()
        if schema.multi_label:
            schema.thresholds = self._thresholds(
                config.instruct.threshold, eval_texts, eval_labels, schema
            )

    def _prompt_budget(self) -> int:
        return self.config_.model.max_length - self.answer_length_

    def input_tokens(self, texts: list[str]) -> list[int]:
        """The tokens of each text's whole prompt (chat turns, instructions, label list and
        the text), before the text is cut to fit ``input_budget()``."""
        prompts = [self.format_.prompt_text(t) for t in texts]
        return [len(ids) for ids in self.tokenizer_(prompts, add_special_tokens=False)["input_ids"]]

    def input_budget(self) -> int:
        """The prompt's room: ``max_length`` less the longest answer, which must follow it."""
        return self._prompt_budget()

    def _encode(self, texts: list[str]) -> list[list[int]]:
        budget = self._prompt_budget()
        long_text = self.config_.long_text
        ratio = long_text.head_tail_ratio if long_text.long_text == "head-tail" else 1.0
        return [self.format_.prompt_ids(t, budget, ratio) for t in texts]

    def _answer_dataset(self, texts: list[str], sets: list[tuple[int, ...]]):
        """Rows of prompt + answer tokens; only the answer tokens carry labels."""
        import datasets

        prompts = self._encode(texts)
        answers = [self.format_.pieces.complete(s) for s in sets]
        return datasets.Dataset.from_dict(
            {
                "input_ids": [p + a for p, a in zip(prompts, answers)],
                "labels": [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers)],
                "answer_length": [len(a) for a in answers],
                "length": [len(p) + len(a) for p, a in zip(prompts, answers)],
            }
        )

    def _prompt_dataset(self, texts: list[str], targets: np.ndarray):
        """Rows of prompt tokens with their class, for validation by label scoring."""
        import datasets

        prompts = self._encode(texts)
        return datasets.Dataset.from_dict(
            {
                "input_ids": prompts,
                "target": targets.tolist(),
                "length": [len(p) for p in prompts],
            }
        )

    def _trainer_forward(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer batches give next-token logits (training); prompt batches give label
        scores (validation, so the best epoch is picked by macro-F1 like the head's)."""
        if "answer_width" in batch:
            return answer_logits(model, batch)
        model = unwrap(model)  # validation: no gradients, so DDP's wrapper has no part
        prefix = batch.get("prefix_ids")
        shared = None
        if prefix is not None and prefix.numel() > 0:
            keys = prefix.numel() + batch["input_ids"].shape[1] + self.answer_length_
            shared = encode_prefix(model, prefix, keys)
            if shared is None:
                batch = join_prefix(batch, self.tokenizer_.pad_token_id)
        return self._label_logits(model, batch, shared)

    def _trainer_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The answer tokens' cross-entropy in training; on validation, the classification
        loss of the label scores (cross-entropy, or binary cross-entropy per label)."""
        if logits.dim() == 3:
            return answer_loss(logits, labels)
        if self.multi_label_:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return torch.nn.functional.cross_entropy(logits, labels)

    # -- zero-shot ---------------------------------------------------------------------

    def zero_shot(self, classes: list[str], multi_label: bool = False) -> InstructClassifier:
        """Ready the untrained model to answer the same prompts: the zero-shot baseline.

        Multi-label thresholds are ``threshold`` when it is a number, else 0.5 (there is
        no validation split to tune them on).

        Example:
            >>> clf = InstructClassifier("smollm2-135m", progress=False)  # doctest: +SKIP
            >>> clf.zero_shot(["business", "sport"]).predict("Shares fell.")  # doctest: +SKIP
            'business'
        """
        self._config = self.resolve_config()
        names = [[c] for c in classes] if multi_label else list(classes)
        schema = LabelSchema.from_labels(names, multi_label).with_hierarchy(
            self.config_.labels.label_hierarchy
        )
        self._new_format(schema)
        self.model_ = self._load_base().requires_grad_(False).eval()
        if multi_label:
            threshold = self.config_.instruct.threshold
            schema.thresholds = [0.5 if threshold == "tuned" else float(threshold)] * len(
                schema.classes
            )
        self.fit_seconds_ = 0.0
        self._set_fitted(schema)
        return self

    # -- inference ---------------------------------------------------------------------

    def _label_logits(
        self, model, batch: dict[str, torch.Tensor], prefix: SharedPrefix | None = None
    ) -> torch.Tensor:
        """[batch, classes]: label scores (single-label) or the logit of each label's
        membership probability (multi-label), so ``to_proba`` gives the probabilities.
        ``prefix``: the batch holds the prompts after this shared, already-run prefix."""
        instruct_cfg = self.config_.instruct
        pieces = self.format_.pieces
        if not self.multi_label_:
            return score_labels(model, batch, pieces, instruct_cfg.score_normalization, prefix)
        proba = label_set_posteriors(model, batch, pieces, instruct_cfg.multi_label_beam, prefix)
        return torch.logit(proba.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR))

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Score mode: [n, num_classes] label scores (log-likelihoods; multi-label: logits
        of the label probabilities), rows in input order."""
        self._check_fitted()
        if self.config_.instruct.predict_mode != "score":
            raise LlmclfError(
                "predict_logits needs predict_mode='score': generated answers have no scores"
            )
        return self._logits(texts)

    def _logits(self, texts: list[str]) -> np.ndarray:
        """Label scores; the tokens all the prompts start with (system turn, instructions,
        label list) run once for the call, not once per text."""
        self.model_.eval()
        prompts = self._encode(texts)
        prefix = None
        invariant = self.config_.train.batch_invariant
        # the shared prefix is what the call's prompts have in common: it depends on the
        # other texts, so a batch-invariant run computes each prompt whole
        if self.config_.instruct.share_prompt_prefix and not invariant:
            with torch.inference_mode():
                longest = max((len(p) for p in prompts), default=0)
                keys = longest + self.answer_length_
                prefix = shared_prefix(self.model_, prompts, self.device_, keys)
        if prefix is not None:
            prompts = [p[prefix.length :] for p in prompts]
        return run_batches(
            prompts,
            lambda batch: self._label_logits(self.model_, batch, prefix),
            self.tokenizer_.pad_token_id,
            self.config_.train.eval_batch_size,
            self.device_,
            progress=self.progress,
            padding_side="left",
            invariant=invariant,
        )

    def predict_details(self, texts: list[str]) -> Prediction:
        """The probabilities of ``texts`` (``predict_proba``'s), columns in ``classes_``
        order, with the prediction mode in ``figures``.

        Score mode: softmax of the label scores (per-label membership probabilities for
        multi-label), temperature applied. Generate mode: the parsed answer as 0/1 rows; a
        row of zeros is an answer naming no label, which ``predict`` returns as None and
        metrics count as wrong; ``figures`` count those (``unparsed``, ``unparsed_rate``)
        and ``columns["answer"]`` holds each raw answer.
        """
        if self.config_.instruct.predict_mode == "score":
            details = super().predict_details(texts)
            return dataclasses.replace(details, figures={"predict_mode": "score"})
        self._check_fitted()
        answers = self.generate_answers(texts)
        proba, unparsed = self._parse_answers(answers)
        figures = {
            "predict_mode": "generate",
            "unparsed": unparsed,
            "unparsed_rate": round(unparsed / len(answers), 4) if answers else 0.0,
        }
        return Prediction(proba, figures=figures, columns={"answer": answers})

    def generate_answers(self, texts: list[str]) -> list[str]:
        """The model's greedy answer to each text's prompt, as text."""
        self._check_fitted()
        instruct_cfg = self.config_.instruct
        new_tokens = instruct_cfg.max_new_tokens or self.answer_length_ + 16
        stops = sorted({self.format_.pieces.end[0], self.tokenizer_.eos_token_id} - {None})
        pad_id = self.tokenizer_.pad_token_id
        self.model_.eval()
        tokens = run_batches(
            self._encode(texts),
            lambda batch: greedy_answers(self.model_, batch, new_tokens, stops, pad_id),
            pad_id,
            self.config_.train.eval_batch_size,
            self.device_,
            progress=self.progress,
            description="generate",
            padding_side="left",
            # every batch runs one forward per new token: splitting it costs that many
            overhead_tokens=forward_overhead_tokens(self.device_) * (new_tokens + 1),
            invariant=self.config_.train.batch_invariant,
        ).astype(np.int64)
        return [self._answer_text(row, set(stops)) for row in tokens]

    def _answer_text(self, tokens: np.ndarray, stops: set[int]) -> str:
        ids = []
        for token in tokens.tolist():
            if token in stops:
                break
            ids.append(token)
        text = self.tokenizer_.decode(ids, skip_special_tokens=True)
        lead = self.tokenizer_.decode(self.format_.pieces.empty, skip_special_tokens=True).strip()
        text = text.strip()
        return text[len(lead) :].strip() if lead and text.startswith(lead) else text

    def _parse_answers(self, answers: list[str]) -> tuple[np.ndarray, int]:
        """0/1 rows of the labels each answer names, and how many answers named none."""
        parser = AnswerParser(
            self.verbalizer_.words, search_anywhere=self.verbalizer_.kind in ("names", "mapping")
        )
        proba = np.zeros((len(answers), len(self.verbalizer_.words)), dtype=np.float32)
        unparsed = 0
        for row, answer in enumerate(answers):
            if self.multi_label_:
                found, understood = parser.parse_set(answer)
                proba[row, found] = 1.0
            else:
                index = parser.parse(answer)
                understood = index is not None
                if understood:
                    proba[row, index] = 1.0
            unparsed += not understood
        return proba, unparsed

    def format_prompt(self, text: str) -> str:
        """The prompt llmclf sends for ``text`` (before any truncation), as a string:
        ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` gives
        the same with the run's tokenizer."""
        self._check_fitted()
        return self.format_.prompt_text(text)

    # -- persistence -------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model_, PeftModel):
            self.model_.save_pretrained(folder)
        self.tokenizer_.save_pretrained(folder)  # with the chat template the prompts used
        state = {
            "template": self.format_.template,
            "verbalizer": self.verbalizer_.kind,
            "answers": dict(zip(self.verbalizer_.classes, self.verbalizer_.words)),
            "answer_length": self.answer_length_,
        }
        write_json(folder / INSTRUCT_STATE, state)

    def _check_files(self, folder: Path) -> None:
        check_tokenizer(folder)
        state = check_json_file(folder, INSTRUCT_STATE)
        keys = ("template", "verbalizer", "answers", "answer_length")
        if not isinstance(state, dict) or any(key not in state for key in keys):
            raise damaged(folder, INSTRUCT_STATE, f"lacks one of {', '.join(keys)}")
        answers = state["answers"]
        missing = [
            c for c in self.schema_.classes if not isinstance(answers, dict) or c not in answers
        ]
        if missing:
            raise damaged(folder, INSTRUCT_STATE, f"has no answer for {', '.join(missing[:5])}")
        if (folder / ADAPTER_CONFIG).is_file():  # zero-shot runs have no adapter
            check_json_file(folder, ADAPTER_CONFIG)
            check_safetensors(folder, ADAPTER_WEIGHTS)

    def _load_model(self, folder: Path) -> None:
        path = folder / INSTRUCT_STATE
        if not path.is_file():
            raise LlmclfError(f"{folder} holds no {INSTRUCT_STATE}: it is not an instruct run")
        state = read_json(path, "instruct run's prompt state")
        self.tokenizer_ = backbone.load_tokenizer(
            str(folder), "left", trust_remote_code=self.config_.model.trust_remote_code
        )
        classes = self.schema_.classes
        verbalizer = Verbalizer(
            state["verbalizer"], classes, [state["answers"][c] for c in classes]
        )
        self._prepare(self.schema_, state["template"], verbalizer, state["answer_length"])
        base = self._load_base()
        if (folder / ADAPTER_CONFIG).is_file():
            self.model_ = backbone.load_adapter_for_inference(base, str(folder))
        else:  # a zero-shot run: the untrained model
            self.model_ = base.requires_grad_(False)
        self.model_.eval()

    def _count_parameters(self) -> tuple[int, int]:
        return backbone.count_parameters(self.model_)
