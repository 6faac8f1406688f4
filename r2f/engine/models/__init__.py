"""Models: the project's BPE tokenizer, Llama-architecture causal LMs built and trained from a seed,
saved as standard Hugging Face folders, and loading of any local HF folder or ``.gguf`` file. One
module per concept, imported by name (this package re-exports nothing):

* :mod:`~r2f.engine.models.prompt`: the prompt format (``qa`` / ``chat``) and a question's prompt ids
* :mod:`~r2f.engine.models.tokenizer`: the project's byte-level BPE tokenizer, trained from texts
* :mod:`~r2f.engine.models.encoding`: a QA pair as token ids with the answer-only (or key-word) label mask
* :mod:`~r2f.engine.models.nll`: the answer-token NLL (logits only where a label needs them)
* :mod:`~r2f.engine.models.training`: a Llama model built from a seed and trained on answer NLL
* :mod:`~r2f.engine.models.io`: atomic save of an HF folder, load of an HF folder or ``.gguf`` file
* :mod:`~r2f.engine.models.memory`: this process's peak resident memory
"""
