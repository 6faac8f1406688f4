"""Models on disk: a standard Hugging Face folder written atomically (safetensors, config, tokenizer
and ``r2f_model.json``, which records the prompt format), and loading of any local HF folder or
``.gguf`` file, offline and without a model's own code."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from r2f.atomic import atomic_dir
from r2f.engine.models.prompt import PROMPT_FORMATS, prompt_format
from r2f.errors import R2FError


class ModelError(R2FError, ValueError):
    """A model path is missing, incomplete or unreadable; the message names the path."""


def set_prompt_format(tokenizer, fmt: str) -> None:
    """Record the model folder's prompt format (:mod:`r2f.engine.models.prompt`) on its tokenizer."""
    if fmt not in PROMPT_FORMATS:
        raise ModelError(f"unknown prompt_format '{fmt}'; expected one of {PROMPT_FORMATS}")
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ModelError("prompt_format 'chat' needs a tokenizer with a chat template")
    tokenizer.r2f_prompt_format = fmt


def save_model(model, tokenizer, path: str | Path, meta: dict | None = None) -> Path:
    """Write a standard HF folder (safetensors + config + tokenizer + r2f_model.json) atomically."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = dict(meta or {})
        if prompt_format(tokenizer) != "qa":
            meta["prompt_format"] = prompt_format(tokenizer)
        (tmp / "r2f_model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return Path(path)


@contextmanager
def _quiet_gguf():
    """Silence the tqdm bar transformers' GGUF tensor loop draws (it ignores ``disable_progress_bar``)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _gguf_vocab_only(tok):
    """The GGUF tokenizer without added tokens beyond the file's vocabulary.

    transformers rebuilds a byte-level ("gpt2") GGUF vocabulary through ``GPT2Tokenizer``, whose
    default ``<|endoftext|>`` then sits past the last id the file (and the model's embedding) has.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = tok.backend_tokenizer
    n = backend.get_vocab_size(with_added_tokens=False)
    spec = json.loads(backend.to_str())
    kept = [t for t in spec.get("added_tokens", []) if t["id"] < n]
    if len(kept) == len(spec.get("added_tokens", [])):
        return tok
    spec["added_tokens"] = kept
    named = {k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "unk_token", "pad_token",
                                                 "add_bos_token", "add_eos_token", "chat_template")}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   **{k: v for k, v in named.items() if v is not None})


def load_model(path: str | Path, dtype: str = "float32"):
    """Load (model, tokenizer) from a local HF folder or a local ``.gguf`` file, offline.

    A ``.gguf`` file must hold an architecture and tokenizer transformers can rebuild (e.g. llama
    with a "gpt2" byte-level BPE vocabulary); any failure to read it raises ``ModelError`` naming it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model path does not exist")
    # safe loading: local files only, never a model's own code, never pickle weights
    kw = {"local_files_only": True, "trust_remote_code": False}
    if path.suffix == ".gguf":
        try:
            with _quiet_gguf():
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kw)
            tok = _gguf_vocab_only(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, **kw))
        except Exception as e:  # truncated/corrupt files fail deep inside transformers or gguf
            raise ModelError(f"{path}: cannot load GGUF model ({type(e).__name__}: {e})") from e
    else:
        if not any(path.glob("*.safetensors")):
            raise ModelError(f"{path}: no *.safetensors weights in the model folder")
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json in the model folder")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kw)
            tok = AutoTokenizer.from_pretrained(path, **kw)
        except Exception as e:  # corrupt weights, unknown architectures, remote code: fail naming the folder
            raise ModelError(f"{path}: cannot load the model folder ({type(e).__name__}: {str(e)[:300]})") from e
        meta_p = path / "r2f_model.json"
        if meta_p.is_file():
            try:
                fmt = json.loads(meta_p.read_text()).get("prompt_format", "qa")
            except (ValueError, AttributeError) as e:
                raise ModelError(f"{meta_p}: not a JSON object ({e})") from e
            set_prompt_format(tok, fmt)
    model = model.to(getattr(torch, dtype)).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
