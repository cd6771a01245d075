"""Load a causal LM (built-in name, hub id, local folder or GGUF file), optionally in 4-bit
NF4, with its tokenizer, and put LoRA adapters on it through PEFT.

GGUF files are dequantized once and cached as an ordinary safetensors folder (under
``$LLMCLF_CACHE``), so every later load, and every adapter's ``base_model_name_or_path``,
goes through the plain ``from_pretrained(folder)`` path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

import llmclf.speed as speed
from llmclf.catalog import MODELS, builtin_folder, builtin_gguf, cache_dir
from llmclf.config import AdapterConfig, ModelConfig
from llmclf.errors import LlmclfError

log = logging.getLogger("llmclf")


# ---------------------------------------------------------------------------------------
# Device and dtype: decided once per classifier (place), passed down as a Placement
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a classifier runs and in what precision: decided once, by ``place``, kept on
    the classifier (``placement_``) and passed down to ``load_model``, the batches and the
    Trainer, so that nothing decides it again.

    Example:
        >>> Placement(torch.device("cpu"), torch.float32, threads=4).figures()
        {'device': 'cpu', 'dtype': 'float32', 'threads': 4, 'malloc_tuned': False}
    """

    device: torch.device
    dtype: torch.dtype
    # --dtype auto on a CPU: what the bf16-vs-fp32 probe measured (DtypeProbe.as_dict)
    dtype_probe: dict | None = None
    # torch's intra-op threads once this process's settings are in force
    threads: int = 1
    # whether glibc's malloc keeps freed memory in this process (speed.tune_malloc)
    malloc_tuned: bool = False

    def figures(self) -> dict:
        """What was decided and applied, for metrics.json (``placement``)."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "threads": self.threads,
            "malloc_tuned": self.malloc_tuned,
        }


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else Apple's MPS (a Mac's GPU), else the CPU. Under
    ``accelerate launch`` / torchrun each process gets its own GPU. Changes nothing."""
    if name == "cuda" and not torch.cuda.is_available():
        raise LlmclfError("--device cuda was asked for but no CUDA GPU is visible")
    if name == "mps" and not mps_available():
        raise LlmclfError("--device mps was asked for but this torch sees no Apple MPS device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else ("mps" if mps_available() else "cpu")
    if name == "cuda":
        from accelerate import PartialState

        return torch.device("cuda", PartialState().local_process_index)
    return torch.device(name)


_applied: set[str] = set()  # the process-wide settings place() has made, each made once


def _apply_process_settings(device: torch.device, tune_malloc: bool) -> None:
    """This process's settings for ``device``, each applied at most once per process."""
    if device.type == "mps" and "mps" not in _applied:
        _applied.add("mps")
        # torch reads PYTORCH_ENABLE_MPS_FALLBACK once, when it is imported (a static
        # registration in ATen's MPSFallback.mm): setting it from here would change nothing,
        # so llmclf only says how to turn it on
        if not os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK"):
            log.info(
                "on MPS, operations the backend lacks fail unless PYTORCH_ENABLE_MPS_FALLBACK=1 "
                "is set before Python starts (they then run on the CPU)"
            )
    if device.type != "cpu":
        return
    if "threads" not in _applied:
        _applied.add("threads")
        speed.fit_threads_to_quota()  # a container's CPU quota, not the host's cores
    if tune_malloc and "malloc" not in _applied:
        _applied.add("malloc")
        speed.tune_malloc()  # freed activations kept, not faulted in again every batch


def place(
    device: str = "auto",
    dtype: str = "auto",
    source: str | None = None,
    *,
    tune_malloc: bool = True,
) -> Placement:
    """The device and compute dtype of a classifier, with this process's CPU settings.

    The first call in a process for a CPU device cuts torch's threads to a container's CPU
    quota (``speed.fit_threads_to_quota``) and, with ``tune_malloc``, sets glibc's malloc
    to keep freed memory (``speed.tune_malloc``); later calls find them made and make them
    no more. Then the dtype (``choose_dtype``; ``source``, the model, gives the probe its
    shapes), measured with the threads the classifier will run with.

    Example:
        >>> placement = place("cpu", "bfloat16", tune_malloc=False)  # doctest: +SKIP
        >>> placement.device, placement.dtype  # doctest: +SKIP
        (device(type='cpu'), torch.bfloat16)
    """
    resolved = resolve_device(device)
    _apply_process_settings(resolved, tune_malloc)
    chosen, probe = choose_dtype(dtype, resolved, source)
    return Placement(
        device=resolved,
        dtype=chosen,
        dtype_probe=probe,
        threads=torch.get_num_threads(),
        malloc_tuned=speed.malloc_tuned(),
    )


def placement_for(config: ModelConfig, source: str | None = None) -> Placement:
    """``place`` with a classifier's model options (``device``, ``dtype``, and whether to
    tune malloc, on by default)."""
    tune = getattr(config, "tune_malloc", True)  # an option of ModelConfig, where it has one
    return place(config.device, config.dtype, source, tune_malloc=tune)


DEFAULT_SIZES = (576, 1536)  # SmolLM2-135M's hidden and MLP sizes, when a config has none


@functools.lru_cache(maxsize=32)
def model_sizes(source: str | None) -> tuple[int, int]:
    """The hidden and MLP (intermediate) sizes of a model folder or hub id, for the dtype
    probe; SmolLM2's when they cannot be read."""
    if source is None:
        return DEFAULT_SIZES
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception:  # a GGUF name not yet converted, remote code, no network: the default
        return DEFAULT_SIZES
    config = getattr(config, "text_config", None) or config
    hidden = getattr(config, "hidden_size", None) or DEFAULT_SIZES[0]
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    return int(hidden), int(intermediate)


def choose_dtype(name: str, device: torch.device, source: str | None = None):
    """The compute dtype and, for ``auto`` on a CPU, the probe that chose it (a dict for
    metrics.json; None otherwise). ``source``: the model, whose sizes the probe uses.

    On CUDA ``auto`` is bf16 where supported, else fp16; on a CPU it is whichever of bf16
    and fp32 measured faster at the model's shapes (``llmclf.speed``); a dtype given by
    name is used as it is."""
    if name != "auto":
        return getattr(torch, name), None
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), None
    if device.type == "mps":
        return torch.float32, None
    probe = speed.cpu_probe(*model_sizes(source))
    return probe.choice, probe.as_dict()


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load reports ("score.weight MISSING"): a fresh head is expected."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# ---------------------------------------------------------------------------------------
# Where the weights are
# ---------------------------------------------------------------------------------------


def model_source(ref: str) -> str:
    """A local folder or hub id that ``from_pretrained`` can open.

    Built-in causal names and ``.gguf`` files become the cached safetensors folder
    (converted on first use); built-in encoders are their Hugging Face folder; folders and
    hub ids are returned unchanged.
    """
    if ref in MODELS:
        entry = MODELS[ref]
        if entry.kind == "encoder":  # shipped as a Hugging Face folder (or a zip of one)
            return str(builtin_folder(entry))
        return str(convert_gguf(builtin_gguf(entry)))
    check_model_ref(ref)
    path = Path(ref).expanduser()
    if ref.lower().endswith(".gguf"):
        return str(convert_gguf(path))
    if path.is_dir():
        return str(path.resolve())
    return ref


def check_model_ref(ref: str) -> None:
    """Refuse, in about a second and before any data or model loads, a model reference
    that cannot be opened: a missing GGUF file, a folder without config.json, or a name
    that is neither a built-in nor a Hugging Face model this machine can get."""
    if ref in MODELS:
        return
    path = Path(ref).expanduser()
    if ref.lower().endswith(".gguf"):
        if not path.is_file():
            raise LlmclfError(f"the GGUF file {ref} does not exist")
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LlmclfError(
                f"{ref} is a folder without config.json: not a transformers model folder"
            )
        return
    check_hub_model(ref)


def _not_a_model(ref: str, why: str) -> LlmclfError:
    return LlmclfError(
        f"model {ref!r} is not a built-in name ({', '.join(MODELS)}), a model folder or a "
        f".gguf file, and {why}"
    )


@functools.lru_cache(maxsize=64)  # a success is remembered: one hub request per id and process
def check_hub_model(ref: str) -> None:
    """Fail in a second, not after a minute of download retries, when ``ref`` cannot be a
    Hugging Face model: not a valid repo id, not in the local hub cache while offline
    (``HF_HUB_OFFLINE``), or not found / not reachable on the hub (one request)."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        raise _not_a_model(ref, "not a Hugging Face hub id")
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise _not_a_model(ref, "not a valid Hugging Face hub id (OWNER/NAME)") from None
    cached = try_to_load_from_cache(ref, "config.json")
    if isinstance(cached, str):
        return
    if constants.is_offline_mode():
        raise _not_a_model(
            ref, "it is not in the Hugging Face cache while HF_HUB_OFFLINE is set (no downloads)"
        )
    try:
        HfApi().model_info(ref, timeout=10)
    except GatedRepoError:
        raise LlmclfError(
            f"model {ref!r} is gated on the Hugging Face hub: accept its terms on its page, "
            "then log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise _not_a_model(
            ref, "no such model is on the Hugging Face hub (or it is private: `hf auth login`)"
        ) from None
    except Exception as exc:  # network errors come in many types (httpx, OSError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _not_a_model(
            ref, f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached: {first}"
        ) from None


CACHE_FORMAT = 3  # bump when the converted folder's content changes


def _gguf_key(path: Path) -> str:
    stat = path.stat()
    raw = f"{CACHE_FORMAT}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(raw).hexdigest()[:12]}"


def gguf_flag(path: Path, key: str) -> bool:
    """A boolean metadata field of a GGUF file (False when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    return bool(field.parts[field.data[0]][0]) if field is not None and field.data else False


def convert_gguf(path: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / _gguf_key(path)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a safetensors folder in %s (once)", path.name, target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    folder, name = str(path.parent), path.name
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(
                folder, gguf_file=name, trust_remote_code=False
            )
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
            )
    except Exception as exc:  # gguf / transformers raise many types for unsupported files
        raise LlmclfError(f"cannot load the GGUF file {path}: {str(exc).splitlines()[0]}") from None
    # transformers refuses to save a model that still says it is GGUF-quantized; the
    # weights are already dequantized fp32 tensors, so it is an ordinary model now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # GGUF tokenizers often pad with EOS; the folder gets a distinct pad token so that
    # transformers' own sequence-classification pooling finds an appended EOS.
    set_pad_token(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    # transformers' GGUF tokenizer conversion drops the file's add_bos_token flag (Gemma's
    # is true: without BOS its outputs degrade), so it is carried over by hand.
    if gguf_flag(path, "tokenizer.ggml.add_bos_token") and tokenizer.bos_token is not None:
        tokenizer.add_bos_token = True
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    del model
    try:
        partial.replace(target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


REMOTE_CODE = "contains custom code"  # transformers' words for a model that ships Python


def remote_code_refused(source: str) -> LlmclfError:
    return LlmclfError(
        f"{source} ships its own Python code (an auto_map in its config): llmclf runs it only "
        "with --trust-remote-code (trust_remote_code=True), for a model you trust"
    )


def load_tokenizer(
    source: str,
    padding_side: str = "right",
    append_eos: bool = False,
    trust_remote_code: bool = False,
):
    """The model's tokenizer with a pad token distinct from EOS (when one exists).

    ``append_eos`` makes every encoding end in EOS, stored in the tokenizer itself so a
    plain ``tokenizer(text)`` reproduces it after save / load. A tokenizer's own Python
    code runs only with ``trust_remote_code``.
    """
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:
        if REMOTE_CODE in str(exc):
            raise remote_code_refused(source) from exc
        raise LlmclfError(
            f"cannot load a tokenizer from {source!r}: {str(exc).splitlines()[0]}"
        ) from exc
    set_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    if append_eos:
        if tokenizer.eos_token is None:
            raise LlmclfError(
                f"the tokenizer of {source} has no EOS token to append; use --pooling mean"
            )
        # Rebuilding the post-processor for EOS must keep a BOS the tokenizer already adds.
        probe = tokenizer("a")["input_ids"]
        tokenizer.add_bos_token = bool(probe) and probe[0] == tokenizer.bos_token_id
        tokenizer.add_eos_token = True
        if tokenizer("a")["input_ids"][-1] != tokenizer.eos_token_id:
            raise LlmclfError(
                f"the tokenizer of {source} cannot be set to append EOS; use --pooling mean"
            )
    return tokenizer


def set_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token that is not EOS, so an appended EOS is never taken
    for padding (by llmclf or by transformers' own sequence-classification pooling).

    Keeps a pad token that differs from EOS; otherwise takes UNK, BOS, then any other
    special token. Only a tokenizer whose single special token is EOS pads with EOS:
    llmclf's pooling reads the attention mask, so it stays right even then.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return
    candidates = [tokenizer.unk_token, tokenizer.bos_token, *tokenizer.all_special_tokens]
    for candidate in candidates:
        if candidate is not None and tokenizer.convert_tokens_to_ids(candidate) != eos:
            tokenizer.pad_token = candidate
            return
    if tokenizer.eos_token is None:
        raise LlmclfError("the tokenizer has no special token at all to pad with")
    tokenizer.pad_token = tokenizer.eos_token


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


def quantization_config(config: ModelConfig, dtype: torch.dtype, keep: list[str]):
    if config.quantize != "4bit":
        return None
    from transformers import BitsAndBytesConfig

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # FSDP (accelerate launch with an FSDP config) shards parameters of one dtype: the
        # packed 4-bit weights are stored as the compute dtype, as PEFT's QLoRA + FSDP does
        bnb_4bit_quant_storage=dtype if uses_fsdp() else torch.uint8,
        llm_int8_skip_modules=keep,
    )


def uses_fsdp() -> bool:
    """Whether ``accelerate launch`` runs this process under FSDP (it says so in the
    environment of the processes it starts)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def truncated_config(source: str, num_layers: int, trust_remote_code: bool = False, **kwargs):
    """The model's config cut to its first ``num_layers`` decoder blocks (the rest of the
    checkpoint is then simply not loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    text = config.get_text_config()
    if not 1 <= num_layers <= text.num_hidden_layers:
        raise LlmclfError(
            f"--num-layers must be between 1 and {text.num_hidden_layers} for {source}, not {num_layers}"
        )
    text.num_hidden_layers = num_layers
    if isinstance(getattr(text, "layer_types", None), list):  # per-layer attention kinds
        text.layer_types = text.layer_types[:num_layers]
    return config


def load_model(
    auto_class,
    source: str,
    config: ModelConfig,
    placement: Placement,
    keep_full_precision: list[str],
    num_layers: int | None = None,
    *,
    run_weights: str | None = None,
    attached: tuple[str, ...] = (),
    **kwargs,
):
    """``auto_class.from_pretrained(source)`` on ``placement``'s device and dtype, with the
    configured quantization.

    ``keep_full_precision`` names modules (the head) that are never quantized;
    ``num_layers`` keeps only the first K decoder blocks. ``run_weights``: ``source`` is a
    run folder whose weights file of that name must fill the model exactly (a missing,
    unexpected or misshapen weight is damage, named), except for the ``attached`` modules
    the caller adds and loads itself.
    """
    device, dtype = placement.device, placement.dtype
    quant = quantization_config(config, dtype, keep_full_precision)
    trust = config.trust_remote_code
    try:
        if num_layers is not None:
            kwargs = {"config": truncated_config(source, num_layers, trust, **kwargs)}
        with quiet_transformers():
            model, loading = auto_class.from_pretrained(
                source,
                trust_remote_code=trust,
                dtype=dtype,
                quantization_config=quant,
                device_map={"": device.index if device.type == "cuda" else device.type},
                output_loading_info=True,
                **kwargs,
            )
    except OSError as exc:
        raise LlmclfError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:
        if REMOTE_CODE in str(exc):
            raise remote_code_refused(source) from exc
        raise LlmclfError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}") from exc
    if run_weights is not None:
        _check_loading(Path(source), run_weights, loading, attached)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name in keep_full_precision:
        module = getattr(model, name, None)
        if module is not None:
            module.float()
    return model


def _check_loading(folder: Path, name: str, loading: dict, attached: tuple[str, ...]) -> None:
    """transformers' loading report on a run's own weights, read strictly: it fills in
    what a file lacks with random weights, and only logs it."""
    from llmclf.run_folder import refuse_weights

    mine = tuple(f"{module}." for module in attached)
    refuse_weights(
        folder,
        name,
        missing=loading.get("missing_keys", ()),
        unexpected=[k for k in loading.get("unexpected_keys", ()) if not k.startswith(mine)],
        misshapen=[f"{key} {list(shape)}" for key, shape, *_ in loading.get("mismatched_keys", ())],
    )


def load_adapter_for_inference(base, folder: str):
    """A saved LoRA adapter on ``base``, ready to predict (``merge_for_inference``).

    Loaded strictly: PEFT keeps random weights for an adapter tensor (or a saved module:
    the head, the window scorer, the pooling token) that the file lacks and ignores one
    the model has no place for, so both are checked here and named as damage."""
    from peft import PeftModel, get_peft_model_state_dict

    from llmclf.run_folder import ADAPTER_WEIGHTS, check_tensors, tensor_shapes

    path = Path(folder)
    try:
        model = PeftModel.from_pretrained(base, folder)
    except RuntimeError as exc:  # torch's load_state_dict: a tensor of another shape
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        if not lines:
            raise
        raise LlmclfError(
            f"{path / ADAPTER_WEIGHTS} does not fit the base model "
            f"{getattr(base, 'name_or_path', '')!r}: {lines[0][:300]}"
        ) from exc
    expected = {k: list(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    check_tensors(path, ADAPTER_WEIGHTS, tensor_shapes(path, ADAPTER_WEIGHTS), expected)
    return merge_for_inference(model)


def merge_for_inference(model):
    """A LoRA model made ready to predict: over a full-precision base the adapter is merged
    into the weights (PEFT ``merge_adapter``; the adapter weights themselves stay as they
    are, so it can still be saved and unmerged); over a 4-bit base it stays separate.

    A model just trained predicts through this too, so its test metrics are those of the
    saved run loaded again, and in bf16 the LoRA matmuls (fp32 weights) stop costing time:
    ``make demo``'s 426 test articles ran at 34.0 examples/s merged vs 15.9 unmerged on a
    2-core AMX Xeon."""
    from peft import PeftModel

    if (
        isinstance(model, PeftModel)
        and getattr(model.get_base_model(), "hf_quantizer", None) is None
    ):
        model.merge_adapter()
    return model


# output layers that "all-linear" leaves out (PEFT never adapts the output layer)
HEADS = ("score", "lm_head", "classifier")


def add_lora(
    model, adapter: AdapterConfig, task_type: str, modules_to_save: list[str] | None = None
):
    """Wrap ``model`` in PEFT LoRA adapters; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    targets = adapter.target_modules
    layers = None
    if adapter.lora_layers is not None:
        total = model.config.get_text_config().num_hidden_layers
        if adapter.lora_layers > total:
            raise LlmclfError(
                f"--lora-layers must be between 1 and {total} (the model's decoder blocks), "
                f"not {adapter.lora_layers}"
            )
        layers = list(range(total - adapter.lora_layers, total))
        if targets == ["all-linear"]:  # PEFT takes layers_to_transform with names only
            targets = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in HEADS
                }
            )
    lora = LoraConfig(
        task_type=task_type,
        r=adapter.lora_r,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        layers_to_transform=layers,
        modules_to_save=modules_to_save,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise LlmclfError(
            f"cannot add LoRA adapters: {str(exc).splitlines()[0]} (check --target-modules)"
        ) from None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters of a PEFT model or a plain one.

    Trainable means what the method trains — LoRA matrices and the saved head copy —
    whether or not ``requires_grad`` is set right now (a loaded run is frozen). 4-bit
    weights are counted unpacked (two values per stored byte).
    """
    from peft import PeftModel

    trainable = total = 0
    for name, param in model.named_parameters():
        n = param.numel() * (2 if param.__class__.__name__ == "Params4bit" else 1)
        total += n
        if isinstance(model, PeftModel):
            trainable += n if ("lora_" in name or ".modules_to_save." in name) else 0
        else:
            trainable += n if param.requires_grad else 0
    return trainable, total


def label_kwargs(schema, **extra) -> dict:
    """``from_pretrained`` arguments that give a ``*ForSequenceClassification`` model
    ``schema``'s classes (names in its config, so plain transformers reports them)."""
    return {
        "num_labels": schema.num_classes,
        "id2label": dict(enumerate(schema.classes)),
        "label2id": {c: i for i, c in enumerate(schema.classes)},
        "problem_type": "multi_label_classification"
        if schema.multi_label
        else "single_label_classification",
        **extra,
    }
