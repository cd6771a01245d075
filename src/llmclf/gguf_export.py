"""A head run as a GGUF file for llama.cpp, with its head kept beside it.

llama.cpp has no place for a trained classification head on a causal LM (its converter
maps ``*ForSequenceClassification`` for BERT-family encoders only), but it computes what
the head reads: run for embeddings, a causal LM's graph returns the final-norm hidden
state of the last token of each sequence (pooling ``LAST``) or their mean (``MEAN``),
which is what llmclf's ``--pooling last`` / ``mean`` hand to the head. So a head run
exports as

- the backbone, LoRA merged into full-precision weights, saved as the base architecture's
  ``*ForCausalLM`` folder and converted by llama.cpp's own converter
  (``convert_hf_to_gguf.py``, the one that ships with the installed llama-cpp-python,
  fetched once from its source distribution) to a float32 GGUF;
- quantized by llama.cpp's own quantizer (``llama_model_quantize``: ``f16``, ``q8_0``,
  ``q4_k_m``), never a hand-written scheme;
- the head (``W h + b``) in float32 in ``head.safetensors``, applied on the host.

The pooling goes into the GGUF the converter's way (a sentence-transformers
``modules.json`` / ``1_Pooling/config.json`` for the architectures whose converter reads
it) and always into ``llmclf_export.json``; the token ids are those of the run's own
``tokenizer.json`` (which appends EOS for last-token pooling), fed to llama.cpp as ids.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from llmclf.errors import LlmclfError

log = logging.getLogger("llmclf")

QUANTIZATIONS = ("f16", "none", "q8_0", "q4_k_m")  # the default first
GGUF_FILES = {
    "none": "model-f32.gguf",
    "f16": "model-f16.gguf",
    "q8_0": "model-q8_0.gguf",
    "q4_k_m": "model-q4_k_m.gguf",
}
HEAD_FILE = "head.safetensors"
POOLINGS = ("last", "mean")  # what llama.cpp pools as llmclf does
CONVERTER = "convert_hf_to_gguf.py"
# what the converter needs from llama.cpp's tree: the script, its per-architecture
# package and the gguf-py it imports (matching the runtime's version)
CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py", "LICENSE")
LLAMA_CPP_ENV = "LLMCLF_LLAMA_CPP"  # a llama.cpp checkout whose converter to use
PACKAGE = "llama-cpp-python"
SENTENCE_POOLING = {"last": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens"}


def llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmclf"


def converter_dir(version: str | None = None) -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py`` (with ``conversion/`` and
    ``gguf-py/``): ``$LLMCLF_LLAMA_CPP`` when set (a llama.cpp checkout), else the copy
    of the installed llama-cpp-python's own, fetched once from its source distribution
    (``pip download``) into ``~/.cache/llmclf/llama.cpp-VERSION``."""
    given = os.environ.get(LLAMA_CPP_ENV)
    if given:
        if not (Path(given) / CONVERTER).is_file():
            raise LlmclfError(
                f"${LLAMA_CPP_ENV} is {given}, which holds no {CONVERTER}: point it at a "
                "llama.cpp checkout, or unset it to use llama-cpp-python's own converter"
            )
        return Path(given)
    version = version or llama_cpp_version()
    folder = _cache_root() / f"llama.cpp-{version}"
    if (folder / CONVERTER).is_file():
        return folder
    log.info("fetching llama.cpp's converter (%s %s's source distribution), once", PACKAGE, version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        scratch = Path(scratch)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-q", "-d", str(scratch), f"{PACKAGE}=={version}"],
            capture_output=True, text=True,
        )  # fmt: skip
        archives = list(scratch.glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no archive"]
            raise LlmclfError(
                f"cannot fetch llama.cpp's converter ({PACKAGE}=={version} source): {last[0]}; "
                f"or set ${LLAMA_CPP_ENV} to a llama.cpp checkout"
            )
        unpacked = scratch / "converter"
        _extract_converter(archives[0], unpacked)
        if folder.exists():  # another export fetched it meanwhile
            return folder
        unpacked.rename(folder)
    return folder


def _extract_converter(archive: Path, target: Path) -> None:
    """The converter's parts from a llama-cpp-python source archive into ``target``."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts  # llama_cpp_python-X/vendor/llama.cpp/...
            inside = parts[1:3] == ("vendor", "llama.cpp") and len(parts) > 3
            if inside and parts[3] in CONVERTER_PARTS:
                member.name = str(Path(*parts[3:]))
                members.append(member)
        if not any(m.name == CONVERTER for m in members):
            raise LlmclfError(f"{archive.name} holds no vendor/llama.cpp/{CONVERTER}")
        tar.extractall(target, members=members, filter="data")


def causal_architecture(config) -> str:
    """The ``*ForCausalLM`` class name llama.cpp's converter knows the backbone by."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        for suffix in ("ForSequenceClassification", "ForCausalLM"):
            if name.endswith(suffix):
                return name[: -len(suffix)] + "ForCausalLM"
    raise LlmclfError(f"cannot tell the model's architecture from its config ({names})")


def write_backbone(module, tokenizer, folder: Path, pooling: str) -> None:
    """The merged backbone of ``module`` (``HeadGraph``) as a ``*ForCausalLM`` folder for
    the converter: its weights without the head, its config naming the causal class, the
    tokenizer as the base model had it (the converter identifies a BPE pre-tokenizer by
    hashing an encoding, which the appended EOS would change), and a
    sentence-transformers pooling description."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    model = module.model
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("score.")}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" says nothing to a user
    try:
        model.save_pretrained(folder, state_dict=state)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [causal_architecture(model.config)]
    config["tie_word_embeddings"] = True  # no lm_head: the embeddings read nothing else
    config_path.write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)
    plain = AutoTokenizer.from_pretrained(folder)
    probe = plain("a")["input_ids"]
    if len(probe) > 1 and probe[-1] == plain.eos_token_id:  # llmclf's appended EOS
        plain.add_bos_token = probe[0] == plain.bos_token_id  # kept as the base adds it
        plain.add_eos_token = False
        plain.save_pretrained(folder)
    (folder / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "1", "path": "1_Pooling",
                     "type": "sentence_transformers.models.Pooling"}])
    )  # fmt: skip
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": model.config.hidden_size,
                    SENTENCE_POOLING[pooling]: True})
    )  # fmt: skip


def _run(command: list[str], what: str, instead: str = "") -> None:
    """A converter step as its own process (the converter puts its own gguf-py first on
    ``sys.path``); its failure said in one line, the last error it printed."""
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = next(
            (line for line in reversed(lines) if "Error" in line or "error" in line),
            lines[-1] if lines else f"exit status {result.returncode}",
        )
        raise LlmclfError(f"{what}: {reason}" + (f"; {instead}" if instead else ""))


def convert(source: Path, target: Path, name: str) -> None:
    """llama.cpp's converter on the folder ``source``, writing a float32 GGUF ``target``
    (``general.name``: ``name``); its refusal (an architecture or pre-tokenizer it does
    not know) said in one line."""
    script = converter_dir() / CONVERTER
    _run(
        [sys.executable, str(script), str(source), "--outfile", str(target), "--outtype", "f32",
         "--model-name", name],
        "llama.cpp's converter refused the run's backbone",
        "export it with --format onnx, which takes every head run",
    )  # fmt: skip


# gguf-py's own metadata copier (what its gguf_new_metadata.py script runs), with the keys
# that make llama.cpp read the file as llmclf does: the pooling, and EOS appended
ADD_METADATA = """
import json, sys
sys.path.insert(0, sys.argv[1])
import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
reader = gguf.GGUFReader(sys.argv[2], "r")
arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
writer = gguf.GGUFWriter(sys.argv[3], arch=arch, endianess=reader.endianess)
given = json.loads(sys.argv[4])
new = {}
if "pooling" in given:
    new[gguf.Keys.LLM.POOLING_TYPE.format(arch=arch)] = MetadataDetails(
        gguf.GGUFValueType.UINT32, int(given["pooling"]))
if given.get("add_eos"):
    new[gguf.Keys.Tokenizer.ADD_EOS] = MetadataDetails(gguf.GGUFValueType.BOOL, True)
copy_with_new_metadata(reader, writer, new, [])
"""


def add_metadata(source: Path, target: Path, pooling: str, add_eos: bool) -> None:
    """``source`` copied to ``target`` with llama.cpp's pooling type (``pooling``) and,
    when the run's tokenizer appends EOS, ``tokenizer.ggml.add_eos_token``, so that
    llama.cpp's own tools (``llama-server --embeddings``) pool and tokenize as the run."""
    from llmclf.methods.gguf import LLAMA_POOLING

    gguf_py = converter_dir() / "gguf-py"
    given = json.dumps({"pooling": LLAMA_POOLING[pooling], "add_eos": add_eos})
    _run(
        [sys.executable, "-c", ADD_METADATA, str(gguf_py), str(source), str(target), given],
        "gguf-py could not write the pooling into the GGUF",
    )


def quantize(source: Path, target: Path, kind: str, threads: int | None = None) -> dict:
    """``source`` (a float32 GGUF) quantized by llama.cpp's ``llama_model_quantize`` as
    ``kind`` (``f16``, ``q8_0``, ``q4_k_m``) into ``target``."""
    import ctypes

    import llama_cpp

    ftypes = {
        "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    params.nthread = threads or len(os.sched_getaffinity(0))
    # llama.cpp logs a line per tensor through llama-cpp-python's logger (errors only,
    # then) and writes a warning per tensor it cannot give the type asked for (read back)
    quiet = logging.getLogger("llama-cpp-python")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with _native_stderr() as said:
            status = llama_cpp.llama_model_quantize(
                str(source).encode(), str(target).encode(), ctypes.byref(params)
            )
    finally:
        quiet.setLevel(level)
    if status != 0 or not target.is_file():
        raise LlmclfError(f"llama.cpp could not quantize the model to {kind} (status {status})")
    info = {"recipe": f"llama.cpp llama_model_quantize {kind.upper()}; head kept float32"}
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", said.text)
    if fallback:  # K-quants need rows of 256: SmolLM2's 576 columns get q5_0 / q8_0 instead
        info["fallback_tensors"] = f"{fallback.group(1)} of {fallback.group(2)}"
        log.warning(
            "llama.cpp gave %s tensors a simpler type than %s (their rows are not a multiple "
            "of its block of 256)", info["fallback_tensors"], kind,
        )  # fmt: skip
    return info


class _Captured:
    text = ""


@contextlib.contextmanager
def _native_stderr():
    """What native code writes to file descriptor 2, and Python code to ``sys.stderr``,
    meanwhile, kept out of the terminal (``.text`` once the block ends)."""
    said = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    python = io.StringIO()  # llama-cpp-python's log callback prints to sys.stderr
    with tempfile.TemporaryFile(mode="w+b") as sink, contextlib.redirect_stderr(python):
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.text = sink.read().decode("utf-8", "replace") + python.getvalue()


def write_head(module, path: Path) -> dict:
    """The head of ``module`` (``HeadGraph``) in float32: ``weight`` [classes, hidden] and
    ``bias`` [classes] when it has one, as safetensors (read without torch)."""
    from safetensors.numpy import save_file

    head = module.model.score
    tensors = {"weight": head.weight.detach().float().cpu().numpy()}
    if getattr(head, "bias", None) is not None:
        tensors["bias"] = head.bias.detach().float().cpu().numpy()
    save_file(tensors, str(path))
    return {"head": path.name, "hidden_size": int(tensors["weight"].shape[1])}


def write_gguf(module, tokenizer, folder: Path, pooling: str, kind: str, name: str) -> dict:
    """``module`` (``HeadGraph``) as ``folder/model-KIND.gguf`` plus ``folder/head.safetensors``
    (``name``: the GGUF's ``general.name``); returns what the export's info file says."""
    target = folder / GGUF_FILES[kind]
    probe = tokenizer("a")["input_ids"]
    add_eos = len(probe) > 1 and probe[-1] == tokenizer.eos_token_id
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        scratch = Path(scratch)
        backbone = scratch / "backbone"
        write_backbone(module, tokenizer, backbone, pooling)
        converted = scratch / "converted.gguf"
        convert(backbone, converted, name)
        full = target if kind == "none" else scratch / GGUF_FILES["none"]
        add_metadata(converted, full, pooling, add_eos)
        converted.unlink()
        info = {"recipe": "llama.cpp convert_hf_to_gguf.py F32; head kept float32"}
        if kind != "none":
            info = quantize(full, target, kind)
    return {
        **info,
        **write_head(module, folder / HEAD_FILE),
        "file": target.name,
        "pooling": pooling,
        "add_eos": add_eos,
        "bytes": target.stat().st_size,
        "llama_cpp_python": llama_cpp_version(),
    }
