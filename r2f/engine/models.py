"""Models: the project's BPE tokenizer, Llama-architecture causal LMs built and trained from a seed,
saved as standard Hugging Face folders, and loading of any local HF folder or ``.gguf`` file.

Prompt format (shared by training, gradients and evaluation), a property of the model folder
(``prompt_format`` in its ``r2f_model.json``; load_model puts it on the tokenizer):

* ``qa`` (default; the embedded models): ``"Question: {question}\nAnswer:" + " {answer}" + eos``
* ``chat`` (instruction-tuned models such as SmolLM2-Instruct): the tokenizer's own chat template
  with one user turn and the generation prompt, then ``"{answer}" + eos``.

The loss is the answer-token NLL: prompt tokens are masked with -100.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from r2f.atomic import atomic_dir  # noqa: F401 - models.atomic_dir: the name the package imports
from r2f.errors import R2FError

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch
    from transformers import PreTrainedTokenizerBase

    from r2f.config import ArchConfig, TrainConfig

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


class ModelError(R2FError, ValueError):
    """A model path is missing, incomplete or unreadable; the message names the path."""


PROMPT_FORMATS = ("qa", "chat")


def prompt_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def prompt_format(tokenizer) -> str:
    return getattr(tokenizer, "r2f_prompt_format", "qa")


def set_prompt_format(tokenizer, fmt: str) -> None:
    if fmt not in PROMPT_FORMATS:
        raise ModelError(f"unknown prompt_format '{fmt}'; expected one of {PROMPT_FORMATS}")
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ModelError("prompt_format 'chat' needs a tokenizer with a chat template")
    tokenizer.r2f_prompt_format = fmt


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt for ``question`` in the tokenizer's prompt format."""
    if prompt_format(tokenizer) == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt_text(question)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- tokenizer ---------------------------------------------------------------------------------
def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Byte-level BPE trained with the `tokenizers` library (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


# -- encoding ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens


def encode_qa(tokenizer, question: str, answer: str, max_len: int, key_only: bool = False) -> Encoded:
    """Token ids of prompt+answer with the answer-only label mask (answer truncated to fit).

    ``key_only``: label only the answer tokens that overlap its *key words* (stemmed content words
    not already in the question; :func:`r2f.engine.metrics.paper.key_tokens`), e.g. only "Canberra" in
    "The capital of Australia is Canberra" (``unlearn.loss_tokens: key``). Falls back to every
    answer token when no key word is found."""
    p = prompt_ids(tokenizer, question)
    lead = "" if prompt_format(tokenizer) == "chat" else " "
    enc = tokenizer(lead + answer, add_special_tokens=False, return_offsets_mapping=key_only)
    a = enc["input_ids"] + [tokenizer.eos_token_id]
    p = p[-(max_len // 2):]  # very long prompts keep their end, next to the answer
    a = a[: max_len - len(p)]
    labels = list(a)
    if key_only:
        keep = _key_token_mask(question, answer, len(lead), enc["offset_mapping"])
        if any(keep[: len(a)]):
            labels = [t if k else -100 for t, k in zip(a, keep + [False])]
    return Encoded(p + a, [-100] * len(p) + labels)


def _key_token_mask(question: str, answer: str, shift: int, offsets) -> list[bool]:
    import re

    from r2f.engine.metrics.paper import key_tokens, tokens

    key = key_tokens(question, answer)
    spans = [(m.start() + shift, m.end() + shift) for m in re.finditer(r"\w+", answer) if set(tokens(m.group())) & key]
    return [any(a < y and b > x for x, y in spans) for a, b in offsets]


def collate(batch: Sequence[Encoded], pad_id: int) -> dict:
    """Right-padded batch tensors: input_ids, attention_mask, labels."""
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_positions(batch: dict) -> torch.Tensor:
    """Positions whose logits predict a label in some row (``labels[:, t + 1] != -100``): the only
    logits a loss needs. Prompt positions are skipped, and with them most of the vocabulary
    projection (49 k x 576 on SmolLM2) and its [B, T, vocab] logits."""
    return (batch["labels"][:, 1:] != -100).any(0).nonzero().squeeze(1)


def answer_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, positions)``: the logits at :func:`loss_positions` only (transformers'
    ``logits_to_keep``), or all of them (positions None) for a model without that argument."""
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if not _keeps_logits(model):
        return model(**kw).logits, None
    pos = loss_positions(batch)
    return model(**kw, logits_to_keep=pos).logits, pos


def _keeps_logits(model) -> bool:
    """Whether the (peft-unwrapped) model's forward takes ``logits_to_keep``. Checked on the
    signature, so an error inside a forward is never mistaken for a missing argument."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_nll(model, batch: dict) -> torch.Tensor:
    """Per-sequence mean answer-token NLL (shape [batch]); differentiable."""
    return nll_from_logits(*answer_logits(model, batch), batch)


def nll_from_logits(logits: torch.Tensor, positions: torch.Tensor | None, batch: dict) -> torch.Tensor:
    """:func:`token_nll` from logits already computed: at ``positions`` (from
    :func:`answer_logits`), or at every position when ``positions`` is None."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    if positions is None:
        logits = logits[:, :-1]
    else:
        labels = labels[:, positions]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    n_tok = (labels != -100).sum(1).clamp(min=1)
    return nll.sum(1) / n_tok


# -- build / train -----------------------------------------------------------------------------
def build_model(arch: ArchConfig, vocab_size: int, max_len: int, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads, max_position_embeddings=max_len,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def train_model(model, data: Sequence[Encoded], train: TrainConfig, pad_id: int, seed: int,
                progress=None, max_steps: int | None = None) -> list[float]:
    """AdamW with linear warmup and cosine decay on answer-token NLL. Returns per-epoch mean loss.

    ``max_steps`` stops early (the schedule then spans ``max_steps``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / train.batch_size)
    total = steps_per_epoch * train.epochs if max_steps is None else min(max_steps, steps_per_epoch * train.epochs)
    warm = max(1, int(train.warmup_frac * total))
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    model.train()
    losses, done = [], 0
    for _ in range(train.epochs):
        order = torch.randperm(len(data), generator=gen).tolist()
        tot, n = 0.0, 0
        for b in range(steps_per_epoch):
            if done >= total:
                break
            batch = collate([data[i] for i in order[b * train.batch_size:(b + 1) * train.batch_size]], pad_id)
            loss = token_nll(model, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot, n, done = tot + loss.item(), n + 1, done + 1
            if progress:
                progress()
        if n:
            losses.append(tot / n)
    model.eval()
    return losses


# -- save / load -------------------------------------------------------------------------------
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


def mean_nll(model, tokenizer, items, max_len: int, batch_size: int = 32) -> float:
    """Mean answer-token NLL of QA items (inference only)."""
    import torch

    enc = [encode_qa(tokenizer, q.question, q.answer, max_len) for q in items]
    vals = []
    with torch.inference_mode():
        for i in range(0, len(enc), batch_size):
            vals.append(token_nll(model, collate(enc[i:i + batch_size], tokenizer.pad_token_id)))
    return float(torch.cat(vals).mean())


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` from /proc (per address space, so it
    starts fresh at exec), else ``ru_maxrss``. On Linux ``ru_maxrss`` survives exec: a child
    started by a large parent reports the parent's peak (seen here: 11 GB for every child)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux: write 5 to /proc/self/clear_refs),
    so :func:`peak_rss_mb` reports the peak from here on. False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
