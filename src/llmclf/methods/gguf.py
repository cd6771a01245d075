"""An exported run (``llmclf export --format gguf``) predicted by llama.cpp: the same
``predict`` / ``predict_proba`` as llmclf's classifiers, with no torch in the prediction
path (llama-cpp-python, the ``tokenizers`` library, safetensors and numpy).

llama.cpp runs the backbone for embeddings with the run's pooling (``LAST``: the
final-norm hidden state of each text's last token, its appended EOS; ``MEAN``: their
mean), each text its own sequence in one batch, on the exact token ids of the run's
tokenizer; the head (``head.safetensors``, float32) is applied here.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from llmclf.errors import LlmclfError
from llmclf.methods.exported import ExportedClassifier, register_runtime

# llama.cpp's pooling for llmclf's (enum llama_pooling_type)
LLAMA_POOLING = {"mean": 1, "last": 3}
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
TOKENS_PER_DECODE = 512


def require_llama_cpp(what: str = "a GGUF export") -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise LlmclfError(
            f"{what} needs llama-cpp-python (it builds llama.cpp from source, minutes): "
            "pip install 'llmclf[gguf]'"
        ) from None


def _free(llama, batch, batch_free) -> None:
    batch_free(batch)
    llama.close()


@register_runtime
class GgufClassifier(ExportedClassifier):
    """An exported run served by llama.cpp (through llama-cpp-python): the same
    ``predict`` / ``predict_proba`` as llmclf's classifiers.

    Example:
        >>> clf = GgufClassifier("runs/bbc/gguf")  # doctest: +SKIP
        >>> clf.predict("The striker scored twice")  # doctest: +SKIP
        'sport'
    """

    method = "gguf"
    format = "gguf"
    runtime = "llama.cpp"
    title = "the GGUF model"
    kind = "a GGUF export"
    int8_quantize = "q8_0"

    def _open(self, folder: Path, threads: int | None) -> None:
        require_llama_cpp()
        import llama_cpp
        from safetensors.numpy import load_file

        path = folder / self.info_["file"]
        if not path.is_file():
            raise LlmclfError(f"{folder} holds no {path.name}: export the run again")
        head = load_file(str(folder / self.info_["head"]))
        self.weight_ = head["weight"].astype(np.float32)
        self.bias_ = head.get("bias")
        pooling = self.info_["pooling"]
        # a decode holds a whole batch of texts, each its own sequence, in one micro-batch
        # (pooling reads every token of a sequence). llama-cpp-python gives an embedding
        # context llama.cpp's most sequences (256), and llama.cpp's mean pooling needs a
        # micro-batch that is a multiple of that (else it aborts reserving the graph)
        full = self.quantize_ == "none"  # float32 weights: a float32 KV cache too
        # Without flash attention (below) texts run one at a time: together they attend
        # over each other's cells of the shared cache, masked (2.7 texts/s at 4 per batch
        # against 3.3 alone, the demo run on a 2-core Zen 4). With it, the speed was flat
        # from 1 to 8 texts of 128 tokens per decode (3.7 to 3.5 texts/s), while llama.cpp's
        # buffers grow with the tokens of a decode (its LM head's logits among them: 49,152
        # floats a token for SmolLM2): at most TOKENS_PER_DECODE, so short texts still batch
        fit = max(1, TOKENS_PER_DECODE // self.max_length_)
        self.batch_size = 1 if full else min(self.batch_size, fit, MAX_SEQUENCES)
        tokens = -(-self.batch_size * self.max_length_ // MAX_SEQUENCES) * MAX_SEQUENCES
        threads = threads or len(os.sched_getaffinity(0))  # llama-cpp-python's default: half
        cache = llama_cpp.GGML_TYPE_F32 if full else llama_cpp.GGML_TYPE_F16
        self.llama_ = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            pooling_type=LLAMA_POOLING[pooling],
            n_ctx=tokens,
            n_batch=tokens,
            n_ubatch=tokens,
            n_seq_max=self.batch_size,
            n_threads=threads,
            n_threads_batch=threads,
            type_k=cache,
            type_v=cache,
            # measured on the demo run (2-core Zen 4, q8_0): without flash attention a
            # batch of texts attends over the whole shared KV cache, 2.2 texts/s at 8 per
            # batch against 3.3 one at a time; with it 3.5-3.7 at any batch size. It
            # computes in half precision, so a float32 export (checked to 1e-3) goes without
            flash_attn=not full,
            verbose=False,
        )
        self.n_embd_ = self.llama_.n_embd()
        if self.n_embd_ != self.weight_.shape[1]:
            raise LlmclfError(
                f"{path.name} gives {self.n_embd_}-dimensional vectors and the head reads "
                f"{self.weight_.shape[1]}: export the run again"
            )
        self.batch_ = llama_cpp.llama_batch_init(tokens, 0, self.batch_size)
        # freed with the classifier, or at exit while llama_cpp can still free them (its
        # own __del__ at interpreter shutdown prints a TypeError)
        weakref.finalize(self, _free, self.llama_, self.batch_, llama_cpp.llama_batch_free)

    def _logits(self, ids: list[list[int]]) -> np.ndarray:
        import llama_cpp

        ctx, batch = self.llama_.ctx, self.batch_
        n = 0
        for seq, tokens in enumerate(ids):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = True  # every token an output: pooling reads them
                n += 1
        batch.n_tokens = n
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        status = llama_cpp.llama_decode(ctx, batch)
        if status != 0:
            raise LlmclfError(f"llama.cpp could not run a batch of {len(ids)} texts ({status})")
        pooled = np.empty((len(ids), self.n_embd_), dtype=np.float32)
        for seq in range(len(ids)):
            vector = llama_cpp.llama_get_embeddings_seq(ctx, seq)
            pooled[seq] = np.ctypeslib.as_array(vector, shape=(self.n_embd_,))
        logits = pooled @ self.weight_.T
        return logits + self.bias_ if self.bias_ is not None else logits
