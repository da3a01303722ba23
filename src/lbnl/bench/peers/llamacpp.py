"""llama.cpp as a peer: ``llamacpp:bf16`` and ``llamacpp:q8_0`` through llama-cpp-python.

The GGUF is written here with the ``gguf`` package (a core dependency of lbnl) rather than llama.cpp's
``convert_hf_to_gguf.py``: llama-cpp-python's sdist vendors that script but its installed package does
not, and a decoder of this family needs only a tensor-name map (``gguf.get_tensor_name_map``), the
hyperparameters and a vocabulary. Matrices are written in bf16 or q8_0 (the embedding table too, as the
converter does), norms in float32; Llama's q/k weights are permuted to llama.cpp's rotary layout as the
converter does, Qwen2/Qwen3 need no permutation.

Hidden states come from llama.cpp's embeddings mode with pooling ``none``: ``llama_get_embeddings_ith`` is
the output of the final norm at a token. In that mode llama.cpp outputs every token (it overrides a batch
that asks for fewer), and its decoder graph ends in the LM head, so unlike lbnl and the ONNX/OpenVINO
exports it also runs the last layer's MLP at every token and the vocabulary projection over every token
(2 * T * hidden * vocab FLOPs more, uncounted by the bench's FLOP model). The context holds the prompt
(``n_ctx``, grown when a longer one comes); the prompt goes in as ``llama_decode`` calls of :data:`UBATCH`
tokens (llama.cpp's own micro-batch size; keys and values of the earlier calls are cached, so this is the
computation one long call does, but the output buffer of every token's logits stays at one micro-batch);
keys and values are cached in f16 (llama.cpp's default) and flash attention is on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Backend, PeerUnavailable
from .export import cached, export_dir

#: llama.cpp micro-batch: tokens per graph evaluation of one ``llama_decode`` call.
UBATCH = 512
#: Model types the GGUF writer knows: llama.cpp architecture and whether q/k need the rotary permutation.
ARCHES = {"qwen3": ("qwen3", False), "qwen2": ("qwen2", False), "llama": ("llama", True)}
FILE = "model.gguf"


def _permute(weights: Any, heads: int) -> Any:
    """HF's rotate-half q/k rows to llama.cpp's interleaved rotary layout (convert_hf_to_gguf's ``permute``)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _vocabulary(checkpoint: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], int | None]:
    """``(tokens, token types, merges, eos id)`` of the checkpoint's byte-level BPE tokenizer, padded to the
    embedding rows."""
    import gguf

    from ...checkpoints import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    for i, piece in enumerate(pieces):
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise PeerUnavailable(f"llama.cpp GGUF: only byte-level BPE tokenizers are written, not {model.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, tokenizer.eos_token_id


def write_gguf(checkpoint: Path, out: Path, variant: str) -> None:
    """Write the checkpoint's backbone as a GGUF file of llama.cpp's architecture for its model type."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    config = json.loads((checkpoint / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in ARCHES or not list(checkpoint.glob("*.safetensors")):
        raise PeerUnavailable(f"llama.cpp GGUF: no writer for model type {model_type!r} (known: {', '.join(ARCHES)}; "
                              "an official-layout checkpoint with safetensors weights)")
    arch, permute = ARCHES[model_type]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if config.get("rope_scaling") or config.get("sliding_window") and config.get("use_sliding_window"):
        raise PeerUnavailable("llama.cpp GGUF: rope scaling and sliding windows are not written")
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[variant]
    file_type = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[variant]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])

    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(checkpoint.name)
    writer.add_context_length(config.get("max_position_embeddings", 32768))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_pooling_type(gguf.PoolingType.NONE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types, merges, eos = _vocabulary(checkpoint, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if model_type.startswith("qwen") else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)
    if eos is not None:
        writer.add_eos_token_id(eos)

    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if not key.startswith("model.") or key.endswith("rotary_emb.inv_freq"):
                    continue  # the projector, an LM head
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise PeerUnavailable(f"llama.cpp GGUF: no GGUF name for tensor {key}")
                data = f.get_tensor(key).to(torch.float32).numpy()
                if permute and key.endswith("q_proj.weight"):
                    data = _permute(data, heads)
                elif permute and key.endswith("k_proj.weight"):
                    data = _permute(data, kv_heads)
                if data.ndim == 1 or data.shape[-1] % 32:
                    writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
                else:
                    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(checkpoint: Path, cache: Path, variant: str, log: Callable[[str], None]) -> Path:
    """The checkpoint's backbone as a ``bf16`` or ``q8_0`` GGUF file, written once (cached)."""
    return cached(export_dir(cache, checkpoint, f"gguf-{variant}"), FILE,
                  lambda tmp: write_gguf(checkpoint, tmp / FILE, variant), log) / FILE


class LlamaCppBackend(Backend):
    def __init__(self, variant: str, model: Path, threads: int):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.name = f"llamacpp:{variant}"
        self.variant, self.model, self.threads = variant, model, threads
        self.version = getattr(llama_cpp, "__version__", "?")
        self.llm: Any = None
        self.n_ctx = 0
        self._open(4096)

    def _open(self, n_ctx: int) -> None:
        from llama_cpp import Llama

        lc = self.llama_cpp
        self.llm = None
        self.llm = Llama(model_path=str(self.model), embedding=True, pooling_type=lc.LLAMA_POOLING_TYPE_NONE,
                         n_ctx=n_ctx, n_batch=UBATCH, n_ubatch=UBATCH, n_threads=self.threads,
                         n_threads_batch=self.threads, flash_attn=True, verbose=False, use_mmap=True)
        self.n_ctx = n_ctx
        self.n_embd = lc.llama_model_n_embd(self.llm.model)

    def _clear(self) -> None:
        lc, ctx = self.llama_cpp, self.llm.ctx
        if hasattr(lc, "llama_memory_clear"):
            lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        elif hasattr(lc, "llama_kv_self_clear"):
            lc.llama_kv_self_clear(ctx)
        else:
            lc.llama_kv_cache_clear(ctx)

    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        import numpy as np

        lc = self.llama_cpp
        n = len(ids)
        if n > self.n_ctx:
            self._open(-(-n // 1024) * 1024)
        self._clear()
        ctx = self.llm.ctx
        out = np.empty((len(read), self.n_embd), dtype=np.float32)
        batch = lc.llama_batch_init(UBATCH, 0, 1)
        try:
            # One llama_decode per micro-batch, the keys and values of the earlier ones cached: what llama.cpp does
            # with a longer batch anyway, but its output buffer (logits and embeddings of every token) stays small.
            for start in range(0, n, UBATCH):
                chunk = ids[start:start + UBATCH]
                for i, token in enumerate(chunk):
                    batch.token[i] = int(token)
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True  # embeddings without pooling output every token (llama.cpp insists)
                batch.n_tokens = len(chunk)
                status = lc.llama_decode(ctx, batch)
                if status != 0:
                    raise RuntimeError(f"llama_decode returned {status}")
                for j, position in enumerate(read):
                    if start <= position < start + len(chunk):
                        pointer = lc.llama_get_embeddings_ith(ctx, int(position) - start)
                        if not pointer:
                            raise RuntimeError(f"llama.cpp gave no embedding at position {position}")
                        out[j] = np.ctypeslib.as_array(pointer, shape=(self.n_embd,))
            return out
        finally:
            lc.llama_batch_free(batch)

    def describe(self) -> str:
        return (f"llama.cpp (llama-cpp-python {self.version}) CPU, {self.variant} GGUF, embeddings without pooling, "
                f"flash attention, f16 KV, ubatch {UBATCH}, {self.threads} thread(s)")


def open_backend(variant: str, checkpoint: Path, cache: Path, threads: int, log: Callable[[str], None]) -> Backend:
    return LlamaCppBackend(variant, export_gguf(checkpoint, cache, variant, log), threads)
