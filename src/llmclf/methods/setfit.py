"""SetFit as a baseline: contrastive fine-tuning of a sentence-transformers encoder on
text pairs, then a classifier on its embeddings (Tunstall et al., 2022).

What a user with a few hundred labels would try instead of an LLM classifier, trained by
SetFit's own ``Trainer`` (``pip install 'llmclf[setfit]'``; the package is imported only
when a run is trained, loaded or exported). Each training text is paired
``--num-iterations`` times with a text of its class and as often with a text of another
class; the body learns to bring the first close and push the second away
(``--epochs``, ``--learning-rate``); then the head is fitted on the body's embeddings:
scikit-learn's logistic regression (``--setfit-head logistic``, SetFit's default) or
SetFit's differentiable head (``--setfit-head differentiable``, ``--head-epochs``,
``--head-learning-rate``). Multi-label data uses SetFit's one-vs-rest strategy.

Either head is a linear map of the embedding whose softmax (sigmoid per label for
multi-label) is the head's own ``predict_proba``, so a run keeps it as one
``head.safetensors`` (``weight`` [classes, dim], ``bias`` [classes]): calibration,
evaluation, serving and the ONNX graph see ordinary logits, and no pickle is written or
read. A run folder is a sentence-transformers folder plus that file::

    RUN/
      modules.json, config.json, model.safetensors, tokenizer.json, 1_Pooling/, ...
                              the fine-tuned body: SentenceTransformer(RUN) loads it
      head.safetensors        logits = body.encode(texts) @ weight.T + bias
      labels.json, calibration.json, config.yaml, metrics.json, ...

ONNX export goes through llmclf's own exporter (``llmclf export RUN``): the whole body
(transformer, pooling, normalisation) and the head traced as one graph. SetFit's
``setfit.exporters.onnx`` is not used: it leaves out the body's ``Normalize`` module
(all-MiniLM-L6-v2 has one), so its graph disagrees with ``SetFitModel.predict_proba``;
it traces with the TorchScript exporter that torch deprecated in 2.9; and for the
logistic head it needs skl2onnx and returns labels and probabilities, not logits, so a
calibrated run's temperature could not be applied.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import llmclf.backbone as backbone
from llmclf.batching import run_batches, truncated_ids
from llmclf.catalog import MODELS
from llmclf.config import (
    POSITIVE,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    option,
    same_as,
    section,
    seed_option,
    threshold_option,
    validate,
)
from llmclf.errors import LlmclfError
from llmclf.labels import LabelSchema
from llmclf.methods.base import ClassifierBase
from llmclf.run_folder import (
    HEAD_WEIGHTS,
    MODEL_WEIGHTS,
    atomic_path,
    check_json_file,
    check_safetensors,
    check_tensors,
    check_tokenizer,
    damaged,
    tensor_shapes,
)

INSTALL = "pip install 'llmclf[setfit]'"
BODY_MODULES = "modules.json"  # sentence-transformers' list of the body's modules
# a label present in every training row (or in none) gets a constant predictor: its
# probability, clipped, as a logit
CONSTANT_PROBABILITY = 1 - 1e-7

SETFIT_DEFAULTS = {"model": "minilm-l6", "dtype": "float32"}


def require(module: str):
    """Import ``module`` (``setfit`` or ``sentence_transformers``) or say which extra to
    install, in one line.

    Example:
        >>> require("setfit").__name__  # doctest: +SKIP
        'setfit'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LlmclfError(missing_message(module)) from None


def missing_message(module: str) -> str:
    """What a setfit run says when ``module`` cannot be imported."""
    return f"--method setfit needs the setfit extra ({module} is not installed): {INSTALL}"


@dataclass
class SetFitConfig:
    """SetFit: contrastive pairs for the body, then a head on its embeddings."""

    num_iterations: int = option(
        20,
        "contrastive pairs per training text and epoch: each text is paired this many times "
        "with a text of its class and as many times with one of another class (SetFit's "
        "num_iterations)",
        bound=POSITIVE,
    )
    epochs: float = same_as(
        TrainConfig, "epochs", default=1.0, help="passes of contrastive training over the pairs"
    )
    batch_size: int = same_as(
        TrainConfig,
        "batch_size",
        default=16,
        help="text pairs per contrastive step (texts per step of a differentiable head)",
    )
    learning_rate: float = same_as(
        TrainConfig,
        "learning_rate",
        default=2e-5,
        help="peak learning rate of the body during contrastive training",
    )
    warmup_ratio: float = same_as(TrainConfig, "warmup_ratio")
    setfit_head: str = option(
        "logistic",
        "the classifier on the embeddings: logistic (scikit-learn's logistic regression on "
        "the fine-tuned body's embeddings, SetFit's default) or differentiable (SetFit's "
        "torch head, trained --head-epochs on the frozen body)",
        choices=("logistic", "differentiable"),
    )
    head_epochs: int = option(
        16, "--setfit-head differentiable: epochs of the head's training", bound=POSITIVE
    )
    head_learning_rate: float | None = same_as(
        TrainConfig,
        "head_learning_rate",
        help="--setfit-head differentiable: the head's learning rate (none: --learning-rate)",
    )
    threshold: str = threshold_option()
    seed: int = seed_option()
    eval_batch_size: int = same_as(TrainConfig, "eval_batch_size")
    batch_invariant: bool = same_as(TrainConfig, "batch_invariant")

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class SetFitClassifierConfig(MethodConfig):
    """Every option of ``SetFitClassifier``; unset ones take ``SETFIT_DEFAULTS``."""

    defaults = SETFIT_DEFAULTS

    model: ModelConfig = section(ModelConfig)
    setfit: SetFitConfig = section(SetFitConfig)

    def __post_init__(self) -> None:
        if self.model.quantize != "none":
            raise LlmclfError(
                "--quantize does not apply to --method setfit: the whole body is trained"
            )
        if self.model.gradient_checkpointing:
            raise LlmclfError(
                "--gradient-checkpointing does not apply to --method setfit (SetFit's Trainer "
                "does not take it)"
            )
        entry = MODELS.get(self.model.model)
        if entry is not None and entry.kind != "encoder":
            encoders = ", ".join(n for n, e in MODELS.items() if e.kind == "encoder")
            raise LlmclfError(
                f"{self.model.model} is a causal LM: --method setfit needs a sentence encoder "
                f"({encoders}, a sentence-transformers hub id or a folder)"
            )


def embedding_dim(body) -> int:
    """The size of a sentence-transformers body's embeddings (the method was renamed in
    sentence-transformers 6)."""
    named = getattr(body, "get_embedding_dimension", None)
    return int(named() if named else body.get_sentence_embedding_dimension())


class SetFitGraph(torch.nn.Module):
    """A SetFit run as one module, ``(input_ids, attention_mask) -> logits`` float32: the
    sentence-transformers body (transformer, pooling, normalisation) then the linear head.
    ``config`` is the body's transformers config naming the classes (an export's
    config.json)."""

    def __init__(self, body, head: torch.nn.Linear, config):
        super().__init__()
        self.body = body
        self.head = head
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.body({"input_ids": input_ids, "attention_mask": attention_mask})
        embedding = features["sentence_embedding"].to(self.head.weight.dtype)
        return self.head(embedding).float()


def linear_logits_of(head, multi_label: bool, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """SetFit's fitted head as (weight [classes, dim], bias [classes]) float32 whose
    softmax (sigmoid per label for multi-label) is the head's ``predict_proba``.

    Logistic regression: its coefficients (two classes: ``[-w/2, w/2]``, as softmax of
    ``[-z/2, z/2]`` is sigmoid ``z``; one-vs-rest: one row per label). SetFit's
    differentiable head: its linear layer divided by its temperature (plus its epsilon),
    as its forward does.

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> lr = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
        >>> weight, bias = linear_logits_of(lr, False, 2)
        >>> weight.shape, bool(np.isclose(weight[1, 0], -weight[0, 0]))
        ((2, 1), True)
    """
    if isinstance(head, torch.nn.Module):  # setfit.SetFitHead
        scale = 1.0 / (head.temperature + head.eps)
        weight = head.linear.weight.detach().cpu().double().numpy() * scale
        bias = head.linear.bias.detach().cpu().double().numpy() * scale
        return weight.astype(np.float32), bias.astype(np.float32)
    estimators = head.estimators_ if multi_label else [head]
    rows, biases = [], []
    dim = head.n_features_in_
    for estimator in estimators:
        if not hasattr(estimator, "coef_"):  # one-vs-rest: a label always (or never) present
            p = float(
                np.clip(np.ravel(estimator.y_)[0], 1 - CONSTANT_PROBABILITY, CONSTANT_PROBABILITY)
            )
            rows.append(np.zeros((1, dim)))
            biases.append(np.array([math.log(p / (1 - p))]))
        else:
            rows.append(np.asarray(estimator.coef_, dtype=np.float64))
            biases.append(np.asarray(estimator.intercept_, dtype=np.float64))
    weight, bias = np.concatenate(rows), np.concatenate(biases)
    if not multi_label and num_classes == 2:  # one score z for the second class
        weight, bias = np.stack([-weight[0] / 2, weight[0] / 2]), np.array([-bias[0], bias[0]]) / 2
    return weight.astype(np.float32), bias.astype(np.float32)


class SetFitClassifier(ClassifierBase):
    """SetFit (sentence-transformers body + logistic or differentiable head) with the
    surface of every llmclf method.

    Options are the fields of ``SetFitClassifierConfig``'s sections; unset ones take
    ``SETFIT_DEFAULTS`` (model ``minilm-l6``, float32) and the section's defaults
    (20 pair iterations, 1 epoch, batch 16, learning rate 2e-5, logistic head).

    Example:
        >>> clf = SetFitClassifier("minilm-l6", num_iterations=5)  # doctest: +SKIP
        >>> clf.fit(texts, labels).predict("Shares fell sharply on Monday")  # doctest: +SKIP
        'business'
    """

    method = "setfit"
    config_class = SetFitClassifierConfig
    exporters = ("onnx",)

    # -- training ----------------------------------------------------------------------

    def _fit(self, texts, labels, eval_texts, eval_labels, schema: LabelSchema, output_dir):
        setfit = require("setfit")
        config = self.config_
        if config.model.dtype != "float32":
            raise LlmclfError(  # bf16 autocast: 1.35x per step, F1 0.578 -> 0.273 (docs)
                f"--method setfit trains in float32 (bf16 mixed precision lost accuracy): "
                f"drop --dtype {config.model.dtype} (a finished run takes --dtype when loaded)"
            )
        source = backbone.model_source(config.model.model)
        self._place(source)
        body = self._body(source)
        torch.manual_seed(config.setfit.seed)  # a differentiable head's initial weights
        model = setfit.SetFitModel(
            model_body=body,
            model_head=self._new_head(setfit, body, schema),
            multi_target_strategy="one-vs-rest" if schema.multi_label else None,
        )
        targets = schema.encode(labels).tolist()  # class ids, or 0/1 rows for multi-label
        self.fit_choices_ = {"setfit": self._train(setfit, model, texts, targets)}
        weight, bias = linear_logits_of(model.model_head, schema.multi_label, schema.num_classes)
        self._assemble(body, weight, bias, schema)
        if schema.multi_label:
            schema.thresholds = self._thresholds(
                config.setfit.threshold, eval_texts, eval_labels, schema
            )

    def _place(self, source: str) -> None:
        """Device, dtype and threads, decided once."""
        self.placement_ = backbone.placement_for(self.config_.model, source)
        self.device_, self.dtype_ = self.placement_.device, self.placement_.dtype

    def _body(self, source: str):
        """The sentence-transformers body of ``source`` on this run's device, reading
        ``--max-length`` tokens."""
        sentence_transformers = require("sentence_transformers")
        model_cfg = self.config_.model
        with backbone.quiet_transformers():
            body = sentence_transformers.SentenceTransformer(
                source, device=str(self.device_), trust_remote_code=model_cfg.trust_remote_code
            )
        if not hasattr(body[0], "auto_model"):
            raise LlmclfError(
                f"{model_cfg.model}: --method setfit needs a sentence-transformers text model "
                f"whose first module is a Transformer, not {type(body[0]).__name__}"
            )
        body.max_seq_length = model_cfg.max_length
        return body

    def _new_head(self, setfit, body, schema: LabelSchema):
        """An unfitted head, as ``SetFitModel.from_pretrained`` makes one."""
        if self.config_.setfit.setfit_head == "differentiable":
            return setfit.SetFitHead(
                in_features=embedding_dim(body),
                out_features=schema.num_classes,
                device=self.device_,
                multitarget=schema.multi_label,
            )
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        regression = LogisticRegression(max_iter=1000, random_state=self.config_.setfit.seed)
        return OneVsRestClassifier(regression) if schema.multi_label else regression

    def _train(self, setfit, model, texts: list[str], targets: list) -> dict:
        """SetFit's Trainer: the contrastive phase, then the head. Returns its figures."""
        cfg = self.config_.setfit
        pairs = 2 * cfg.num_iterations * len(texts)
        # max_steps = the epochs' steps: the same training, and SetFit then draws only as
        # many candidate pairs as it needs, not all n² of a large training set
        steps = max(1, math.ceil(cfg.epochs * math.ceil(pairs / cfg.batch_size)))
        head_rate = cfg.head_learning_rate or cfg.learning_rate
        with tempfile.TemporaryDirectory() as scratch:  # save_strategy "no": stays empty
            args = setfit.TrainingArguments(
                output_dir=scratch,
                batch_size=(cfg.batch_size, cfg.batch_size),
                num_epochs=(cfg.epochs, cfg.head_epochs),
                max_steps=steps,
                num_iterations=cfg.num_iterations,
                body_learning_rate=(cfg.learning_rate, cfg.learning_rate),
                head_learning_rate=head_rate,
                warmup_proportion=cfg.warmup_ratio,
                max_length=self.config_.model.max_length,
                seed=cfg.seed,
                report_to="none",
                save_strategy="no",
                show_progress_bar=self.progress,
            )
            trainer = setfit.Trainer(model=model, args=args)
            trains_on = trainer.st_trainer.args.device  # the transformers Trainer's choice
            if trains_on.type != self.device_.type:
                raise LlmclfError(
                    f"--device {self.device_.type}: SetFit's Trainer trains on {trains_on.type} "
                    "whenever it is visible; hide it (CUDA_VISIBLE_DEVICES=) to train elsewhere"
                )
            if not self.progress:
                from transformers.trainer_callback import ProgressCallback

                trainer.remove_callback(ProgressCallback)
            start = time.perf_counter()
            trainer.train_embeddings(texts, targets)
            body_seconds = time.perf_counter() - start
            trainer.train_classifier(texts, targets)
        state = trainer.st_trainer.state  # the sentence-transformers Trainer's
        losses = [e["embedding_loss"] for e in state.log_history if "embedding_loss" in e]
        return {
            "pairs_per_epoch": pairs,
            "steps": int(state.global_step),
            "body_seconds": round(body_seconds, 2),
            "head_seconds": round(time.perf_counter() - start - body_seconds, 2),
            "last_embedding_loss": round(float(losses[-1]), 6) if losses else None,
        }

    def _assemble(self, body, weight: np.ndarray, bias: np.ndarray, schema: LabelSchema) -> None:
        """The prediction path, the same after ``fit`` and ``load``: body and linear head
        as one module on this run's device and dtype."""
        head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
        config = copy.deepcopy(body[0].auto_model.config)
        config.id2label = dict(enumerate(schema.classes))
        config.label2id = {label: i for i, label in enumerate(schema.classes)}
        self.body_, self.tokenizer_ = body, body.tokenizer
        self.model_ = SetFitGraph(body, head, config).to(self.device_, self.dtype_).eval()

    # -- inference ---------------------------------------------------------------------

    def _logits(self, texts: list[str]) -> np.ndarray:
        """The head's logits, [n, num_classes]: their softmax (sigmoid per label for
        multi-label) is SetFit's ``predict_proba``."""
        self.model_.eval()
        cfg = self.config_
        return run_batches(
            truncated_ids(self.tokenizer_, texts, cfg.model.max_length),
            lambda batch: self.model_(batch["input_ids"], batch["attention_mask"]),
            self.tokenizer_.pad_token_id,
            cfg.setfit.eval_batch_size,
            self.device_,
            progress=self.progress,
            invariant=cfg.setfit.batch_invariant,
        )

    def input_budget(self) -> int:
        return self.config_.model.max_length

    def export_module(self) -> torch.nn.Module:
        return self.model_.eval()

    # -- persistence -------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.body_.save(str(folder), create_model_card=False)
        head = {k: v.detach().float().cpu().contiguous() for k, v in self._head_state().items()}
        with atomic_path(folder / HEAD_WEIGHTS) as partial:
            save_file(head, str(partial))

    def _head_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.model_.head.weight, "bias": self.model_.head.bias}

    def _check_files(self, folder: Path) -> None:
        modules = check_json_file(folder, BODY_MODULES)
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise damaged(folder, BODY_MODULES, "is not a list of sentence-transformers modules")
        check_json_file(folder, "config.json")
        check_tokenizer(folder)
        check_safetensors(folder, MODEL_WEIGHTS)
        classes = self.schema_.num_classes
        check_safetensors(folder, HEAD_WEIGHTS, rows={"weight": classes, "bias": classes})

    def _load_model(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self._place(str(folder))
        body = self._body(str(folder))
        # transformers fills a tensor missing from the file with random values, warning
        # only: every tensor of the body must be there, in its shape
        transformer = body[0].auto_model
        expected = {k: list(v.shape) for k, v in transformer.state_dict().items()}
        check_tensors(folder, MODEL_WEIGHTS, tensor_shapes(folder, MODEL_WEIGHTS), expected)
        dim = embedding_dim(body)
        classes = self.schema_.num_classes
        found = tensor_shapes(folder, HEAD_WEIGHTS)
        check_tensors(folder, HEAD_WEIGHTS, found, {"weight": [classes, dim], "bias": [classes]})
        head = load_file(str(folder / HEAD_WEIGHTS))
        self._assemble(
            body, head["weight"].float().numpy(), head["bias"].float().numpy(), self.schema_
        )

    def _count_parameters(self) -> tuple[int, int]:
        """Every weight is trained: the body contrastively, then the head."""
        n = sum(p.numel() for p in self.model_.parameters())
        return n, n
