"""Prompt format (shared by training, gradients and evaluation), a property of the model folder
(``prompt_format`` in its ``r2f_model.json``; :func:`r2f.engine.models.io.load_model` puts it on
the tokenizer):

* ``qa`` (default; the embedded models): ``"Question: {question}\\nAnswer:" + " {answer}" + eos``
* ``chat`` (instruction-tuned models such as SmolLM2-Instruct): the tokenizer's own chat template
  with one user turn and the generation prompt, then ``"{answer}" + eos``.
"""

from __future__ import annotations

PROMPT_FORMATS = ("qa", "chat")


def prompt_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def prompt_format(tokenizer) -> str:
    return getattr(tokenizer, "r2f_prompt_format", "qa")


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt for ``question`` in the tokenizer's prompt format."""
    if prompt_format(tokenizer) == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt_text(question)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
