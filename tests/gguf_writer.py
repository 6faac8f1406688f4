"""Write a tiny HF Llama model and its byte-level BPE tokenizer to a ``.gguf`` file (test helper).

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` for the Llama architecture, so the file is
what a real conversion would give: llama metadata, F32 tensors under llama.cpp's names, q/k rows
permuted for llama.cpp's rotary layout (transformers' GGUF loader undoes that permutation), the
output matrix left out when tied to the embedding, and a "gpt2" (byte-level BPE) tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path


def _permute(w, n_head: int, n_head_kv: int):
    """llama.cpp's ``LlamaModel.permute``: q/k rows from HF's half-split rotary to interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer, path: str | Path, name: str = "r2f-tiny") -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and ``tokenizer`` (byte-level BPE) to ``path`` as F32 GGUF."""
    import gguf
    import numpy as np

    cfg = model.config
    assert cfg.model_type == "llama", cfg.model_type
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))

    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # tokenizer: vocabulary in id order, control tokens marked, merges as "a b" strings
    vocab = tokenizer.get_vocab()
    assert sorted(vocab.values()) == list(range(len(vocab))) == list(range(cfg.vocab_size)), "dense vocab"
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    # tensors
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp omits output.weight when tied; the loader ties it back
        if "rotary_emb" in hf_name:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise KeyError(f"no llama.cpp name for {hf_name}")
        data = t.detach().to("cpu").float().numpy().astype(np.float32)
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        w.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(data))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
