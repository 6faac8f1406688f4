"""The memory one forward + backward may keep: a pass saves activations for its backward in
proportion to its padded tokens (about 2.4 MB per token on SmolLM2-135M with weight gradients), so a
batch whose loss is a sum over sequences is run in row slices cut to a budget in MB
(``unlearn.activation_budget_mb``), with the bytes per token *measured* on the model as it runs,
not assumed.

One mechanism for every backward of the engine: the baselines' LoRA and full gradients
(:func:`r2f.engine.grads._backward_over`), r2f_pc's sampled Fisher
(:func:`r2f.engine.unlearn.precondition.output_grad_covariances`) and R2F's one-pass path
(:mod:`r2f.engine.onepass`, which adds the module inputs it holds to the measured bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

DEFAULT_BUDGET_MB = 1024.0  # = unlearn.activation_budget_mb's default
PROBE_ROWS = 2  # rows of the first, measured pass


def micro_batches(batch: dict, max_tokens: int | None):
    """Contiguous row slices of a right-padded batch with at most ``max_tokens`` padded tokens each
    (at least one row; ``None``: the whole batch), trailing all-pad columns trimmed."""
    n, t = batch["input_ids"].shape
    step = n if max_tokens is None else max(1, max_tokens // max(1, t))
    for s in range(0, n, step):
        sub = {k: v[s:s + step] for k, v in batch.items()}
        width = max(1, int(sub["attention_mask"].sum(1).max()))
        yield {k: v[:, :width] for k, v in sub.items()}


@contextmanager
def saved_storages(model, seen: dict):
    """Within: every storage autograd saves for the backward (the model's parameters excluded) is
    recorded in ``seen`` (data pointer -> bytes)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def token_cap(budget_mb: float | None, bytes_per_token: float) -> int | None:
    """Padded tokens per pass that fit ``budget_mb`` (``None``: no cap)."""
    if budget_mb is None:
        return None
    return max(1, int(budget_mb * 2**20 // max(1.0, bytes_per_token)))


def budgeted_passes(model, batches: Iterable[dict], run: Callable[[dict], None],
                    budget_mb: float | None = DEFAULT_BUDGET_MB, memory: dict | None = None) -> None:
    """``run(micro_batch)`` (one forward + backward) over every row of ``batches``, in row slices
    whose saved activations fit ``budget_mb``. The first pass runs :data:`PROBE_ROWS` rows and
    measures what autograd saves per padded token; every later slice is cut to that (a sum over
    sequences is the same sum in any slicing). ``memory``, if given, receives
    ``activation_kb_per_token`` and ``max_tokens``. ``budget_mb=None``: whole batches."""
    cap = None
    measured = budget_mb is None
    for batch in batches:
        rest = batch
        if not measured:
            n = batch["input_ids"].shape[0]
            first = next(micro_batches({k: v[:PROBE_ROWS] for k, v in batch.items()}, None))
            seen: dict = {}
            with saved_storages(model, seen):
                run(first)
            per_token = sum(seen.values()) / max(1, first["input_ids"].numel())
            cap, measured = token_cap(budget_mb, per_token), True
            if memory is not None:
                memory.update(activation_kb_per_token=round(per_token / 1024, 1), max_tokens=cap)
            if n <= PROBE_ROWS:
                continue
            rest = {k: v[PROBE_ROWS:] for k, v in batch.items()}
        for mb in micro_batches(rest, cap):
            run(mb)
