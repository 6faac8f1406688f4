"""R2F's fast path: the LoRA gradients of many per-item adapters (and their activation bases) in one
forward and one input-gradient-only backward per batch, with hooks instead of a peft wrap per item.
With B = 0 the adapters do not change the forward pass and peft's ``grad_B = s * sum_t delta_t
(A x_t)^T``; these functions form that sum directly (tested equal to :func:`grads.lora_gradients`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from r2f.engine.budget import token_cap
from r2f.engine.grads import ModuleInfo, _sign, grads_only_for
from r2f.engine.grams import GramFactor, input_key, token_weights, top_basis
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.head import answer_forward
from r2f.engine.models.nll import token_nll
from r2f.engine.parallel import split_even

if TYPE_CHECKING:
    import torch

    from r2f.engine.models.head import AnswerStates
    from r2f.engine.paraphrase import Views


def _runs(groups: Sequence[int]) -> list[tuple[int, int, int]]:
    """(group, start, end) for each run of consecutive equal group ids."""
    k = len(groups)
    cuts = [0] + [j for j in range(1, k) if groups[j] != groups[j - 1]] + [k]
    return [(groups[a], a, b) for a, b in zip(cuts, cuts[1:])]


def _batches_with_runs(batches, seq_groups: Sequence[int]):
    """Each batch with the :func:`_runs` of its sequences' group ids."""
    n = sum(b["input_ids"].shape[0] for b in batches)
    if n != len(seq_groups):
        raise ValueError(f"{len(seq_groups)} group ids for {n} sequences")
    start = 0
    for b in batches:
        k = b["input_ids"].shape[0]
        yield b, _runs(list(seq_groups[start:start + k]))
        start += k


@contextmanager
def _input_gradients_only(model, infos: Sequence[ModuleInfo], fwd):
    """All weights frozen, the embedding output made to require grad (so input gradients flow
    through every module and no weight-gradient GEMM runs), ``fwd(name)`` as forward hook on each
    adapted module."""
    mods = dict(model.named_modules())
    handles = [mods[i.name].register_forward_hook(fwd(i.name)) for i in infos]
    handles.append(model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True)))
    try:
        with grads_only_for(model):
            yield
    finally:
        for h in handles:
            h.remove()


def grouped_lora_gradients(model, infos: Sequence[ModuleInfo], batches, seq_groups: Sequence[int],
                           bases: Sequence[dict], objective: str = "ascent") -> dict[str, torch.Tensor]:
    """LoRA gradients of many adapters at once: sequence ``j`` of the (concatenated) ``batches``
    belongs to group ``seq_groups[j]``, whose adapter on module m has ``A = bases[g][m]`` (r x in)
    and ``B = 0``. Returns, per module, ``Y[g] = grad_B[g] / s`` (groups x out x r) of the mean
    unlearning loss over *all* sequences, in one forward and one backward.

    With B = 0 the adapters do not change the forward pass, and peft's ``grad_B = s * sum_t
    delta_t (A x_t)^T`` (delta_t: the gradient w.r.t. the module's output at token t). Forward hooks
    keep ``A_g x_t`` (r floats per token) per run of one group's sequences; tensor hooks on the
    outputs form the sum with one matmul per run. No weight
    gradient is computed: the frozen weights' gradient GEMMs are skipped, only the input gradients
    are propagated. Equal to :func:`lora_gradients` run once per group (to float precision; tested),
    without a peft wrap per group."""
    import torch

    mods = dict(model.named_modules())
    n_groups = len(bases)
    A = {i.name: torch.stack([b[i.name] for b in bases]) for i in infos}  # groups x r x in
    Y = {i.name: torch.zeros(n_groups, mods[i.name].out_features, A[i.name].shape[1]) for i in infos}
    state: dict = {}

    def fwd(name):
        def fn(_m, inputs, out):
            if not out.requires_grad:
                return
            x = inputs[0].detach()
            # per run of consecutive sequences of one group: (group, rows, A_g x_t), r floats a token
            runs = [(g, s, e, (x[s:e] @ A[name][g].T.to(x.dtype)).reshape(-1, A[name].shape[1]))
                    for g, s, e in state["runs"]]

            def on_grad(delta):
                for g, s, e, xa in runs:
                    Y[name][g] += delta[s:e].reshape(-1, delta.shape[-1]).T.float() @ xa.float()
            out.register_hook(on_grad)
        return fn

    n = len(seq_groups)
    with _input_gradients_only(model, infos, fwd):
        for b, state["runs"] in _batches_with_runs(batches, seq_groups):
            (_sign(objective) * token_nll(model, b).sum() / n).backward()
    return Y


def group_batches(tokenizer, groups: Sequence[Sequence[Views]], max_len: int, objective: str = "ascent",
                  refusals: Sequence[str] = (), chunk: int = 40,
                  key_only: bool = False) -> tuple[list[dict], list[int]]:
    """Batches of whole groups (a group's sequences never straddle two batches; a batch holds up to
    ``chunk`` sequences, or one larger group), and the group id of every sequence, in order. The
    sequences are those of :func:`view_batches` over all the groups' views, in the same order."""
    if objective == "refusal" and not refusals:
        raise ValueError("objective 'refusal' needs refusal strings")
    batches, seq_groups, cur, i = [], [], [], 0
    for gi, views in enumerate(groups):
        seqs = []
        for v in views:
            answer = refusals[i % len(refusals)] if objective == "refusal" else v.answer
            seqs += [encode_qa(tokenizer, q, answer, max_len, key_only and objective != "refusal")
                     for q in v.questions]
            i += 1
        if cur and len(cur) + len(seqs) > chunk:
            batches.append(collate(cur, tokenizer.pad_token_id))
            cur = []
        cur += seqs
        seq_groups += [gi] * len(seqs)
    if cur:
        batches.append(collate(cur, tokenizer.pad_token_id))
    return batches, seq_groups


def _sub_batch(b: dict, s: int, e: int) -> dict:
    """Rows ``s:e`` of a right-padded batch, trimmed to their longest sequence."""
    n = int(b["attention_mask"][s:e].sum(1).max())
    return {k: v[s:e, :n] for k, v in b.items()}


def _run_bases(xs: dict, runs, w, rank: int, whiten: dict | None = None) -> dict[str, list]:
    """Per module, the top-``rank`` basis of each run's weighted inputs (q/k/v, gate/up read one
    input tensor: one eigendecomposition per group of modules).

    ``whiten`` (module -> symmetric ``W = (A_r + lam I)^-1/2``): the *contrast* basis instead, the top
    generalised eigenvectors of the item's Gram K against the retain covariance (largest
    ``a^T K a / a^T (A_r + lam I) a``: large for the item, small for retain text), from the whitened
    rows ``x W`` (``a = W v``), orthonormalised so the analytic decoder stays a projection."""
    import torch

    shared: dict = {}
    out = {}
    for name, x in xs.items():
        key = input_key(x)
        if key not in shared:
            per_run = []
            wm = whiten[name] if whiten is not None else None
            for _g, s, e in runs:
                xf = x[s:e].float().reshape(-1, x.shape[-1])
                wr = w[s:e].reshape(-1, 1)
                rows = (xf * wr.sqrt())[wr.squeeze(1) > 0]
                if wm is not None:
                    rows = rows @ wm
                gram = GramFactor(rows) if rows.shape[0] < rows.shape[1] else rows.T @ rows
                basis = top_basis(gram, rank)
                if wm is not None:
                    q, _ = torch.linalg.qr((basis @ wm).T)  # in x r, orthonormal columns spanning W v
                    basis = q.T * torch.sign(torch.diagonal(q.T @ (basis @ wm).T))[:, None]
                per_run.append(basis)
            shared[key] = per_run
        out[name] = shared[key]
    return out


def one_pass_lora_gradients(model, infos: Sequence[ModuleInfo], batches, seq_groups: Sequence[int], rank: int,
                            weighting: tuple[float, float] | None = None, objective: str = "ascent",
                            micro_batch: int | None = None, n_seqs: int | None = None,
                            token_beta: float | None = None, whiten: dict | None = None,
                            activation_budget_mb: float | None = None, memory: dict | None = None,
                            ) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """R2F's per-group activation bases *and* LoRA gradients in one forward and one backward per
    batch (batches from :func:`group_batches`): the forward keeps each module's input; after it the
    token weights (from the logits, :func:`token_weights`) give every group's weighted activation
    Gram and its top-``rank`` basis A_g (:func:`top_basis`); the backward then forms
    ``Y[g] = grad_B[g] / s = sum_t delta_t (A_g x_t)^T`` as in :func:`grouped_lora_gradients`.

    Equal to :func:`activation_grams` + :func:`top_bases` per group followed by
    :func:`grouped_lora_gradients` (tested), without the separate Gram forward: the cost is one
    forward and one input-gradient-only backward, i.e. a LoRA fwd+bwd. Returns (Y, bases).

    ``micro_batch``: a batch of more sequences runs in low-memory mode instead: a no-grad forward
    over the whole batch computes every module's bases inside its forward hook (nothing is kept but
    the bases; with a fitted token weighting one more no-grad forward gives the logits first), then
    forward + backward over ``micro_batch`` sequences at a time, so the activations a backward saves
    are those of one micro-batch. Same result (tested), one or two more forwards.

    ``n_seqs``: the number of sequences the mean loss is over (default: these batches'); a shard of
    a larger set passes the whole set's count, so the shards' results concatenate to the full one.

    ``token_beta``: weight each answer token's NLL by ``p^beta`` (its current probability, held
    fixed; :func:`objective_loss`), so the ascent works on the tokens the model still knows.
    ``whiten``: contrast bases against the retain covariance (:func:`_run_bases`).

    ``activation_budget_mb``: the memory one forward + backward may keep for the backward (the tensors
    autograd saves and the kept module inputs). Measured once per call on two sequences
    (:func:`_activation_bytes_per_token`), it sets the sequences per forward + backward of each batch
    (at most ``micro_batch``); a batch of more runs in the low-memory mode above, with the same result.
    ``memory`` (out): the measured bytes per token and the smallest micro-batch used."""
    import torch

    mods = dict(model.named_modules())
    n_groups = max(seq_groups) + 1 if seq_groups else 0
    Y = {i.name: torch.zeros(n_groups, mods[i.name].out_features, rank) for i in infos}
    bases: list[dict] = [dict() for _ in range(n_groups)]
    # mode "keep": store the input; "basis": compute the bases from it at once (low-memory); "proj":
    # project it on state["proj"] (bases known) for the backward; "off": nothing
    state: dict = {"x": {}, "xa": {}, "mode": "keep", "proj": {}, "last": None}

    def fwd(name):
        def fn(_m, inputs, out):
            if state["mode"] == "off":
                return
            if state["mode"] == "keep":
                state["x"][name] = inputs[0].detach()
            elif state["mode"] == "basis":
                x = inputs[0]
                last = state["last"]  # q/k/v (gate/up) run one after another on one input tensor
                if last is None or last[0] is not x:
                    last = state["last"] = (x, _run_bases({name: x.detach()}, state["runs"], state["w"], rank,
                                                              whiten)[name])
                state["bases_now"][name] = last[1]
                return
            else:
                x = inputs[0].detach()
                state["xa"][name] = [(g, s, e, (x[s:e].float() @ a.T).reshape(-1, rank))
                                     for g, s, e, a in state["proj"][name]]
            if not out.requires_grad:
                return

            def on_grad(delta):
                for g, s, e, xa in state["xa"][name]:
                    Y[name][g] += delta[s:e].reshape(-1, delta.shape[-1]).T.float() @ xa
            out.register_hook(on_grad)
        return fn

    n = n_seqs or len(seq_groups)
    with _input_gradients_only(model, infos, fwd):
        per_token = None
        if activation_budget_mb is not None and batches:
            per_token = _activation_bytes_per_token(model, _sub_batch(batches[0], 0, min(2, len(batches[0]["input_ids"]))),
                                                    state)
            if memory is not None:
                memory["activation_kb_per_token"] = round(per_token / 1024, 1)
        for b, runs in _batches_with_runs(batches, seq_groups):
            if any(bases[g] for g, _, _ in runs) or len({g for g, _, _ in runs}) < len(runs):
                raise ValueError("a group's sequences straddle two batches: build them with group_batches")
            k = b["input_ids"].shape[0]
            if per_token is not None:
                fits = max(1, token_cap(activation_budget_mb, per_token) // b["input_ids"].shape[1])
                micro_batch = min(micro_batch or k, fits)
            if memory is not None:
                memory["micro_batch"] = min(memory.get("micro_batch", k), micro_batch or k)
            low_memory = micro_batch is not None and k > micro_batch
            if low_memory:
                with torch.no_grad():
                    if weighting is None:
                        w = token_weights(None, b, None)  # uniform: the mask, no logits needed
                    else:
                        state["mode"] = "off"
                        w = token_weights(answer_forward(model, b), b, weighting)
                    state.update(mode="basis", w=w, runs=runs, bases_now={})
                    answer_forward(model, b)
                per_module, state["last"] = state["bases_now"], None
            else:
                state["mode"] = "keep"
                st = answer_forward(model, b)
                w = token_weights(st, b, weighting)  # B x T (no grad)
                per_module = _run_bases(state["x"], runs, w, rank, whiten)
            for name, per_run in per_module.items():
                for (g, _, _), a in zip(runs, per_run):
                    bases[g][name] = a
            if not low_memory:
                # the inputs were kept by this forward: project them for its backward
                state["xa"] = {name: [(g, s, e, (state["x"][name][s:e].float() @ a.T).reshape(-1, rank))
                                      for (g, s, e), a in zip(runs, per_run)]
                               for name, per_run in per_module.items()}
                state["x"] = {}
                (objective_loss(st, objective, token_beta) / n).backward()
            else:
                state["x"], state["mode"] = {}, "proj"
                for m0 in range(0, k, micro_batch):
                    m1 = min(k, m0 + micro_batch)
                    state["proj"] = {name: [(g, max(s, m0) - m0, min(e, m1) - m0, a)
                                            for (g, s, e), a in zip(runs, per_run) if s < m1 and e > m0]
                                     for name, per_run in per_module.items()}
                    sub = _sub_batch(b, m0, m1)
                    (objective_loss(answer_forward(model, sub), objective, token_beta) / n).backward()
            state["xa"] = {}
    return Y, bases


def _activation_bytes_per_token(model, batch: dict, state: dict) -> float:
    """Bytes a forward keeps for its backward, per (padded) token of ``batch``: the storages autograd
    saves (weights excluded) and the module inputs the keep mode holds, on the model as it is set up
    (input gradients only). One forward, no backward (:func:`r2f.engine.budget.saved_storages`)."""
    from r2f.engine.budget import saved_storages

    seen: dict = {}
    state["mode"], state["x"] = "keep", {}
    with saved_storages(model, seen):
        loss = objective_loss(answer_forward(model, batch), "ascent")
    for x in state["x"].values():
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    state["x"] = {}
    del loss
    return sum(seen.values()) / max(1, batch["input_ids"].numel())


def objective_loss(states: AnswerStates, objective: str, token_beta: float | None = None):
    """The summed per-sequence unlearning loss of a batch (its answer positions,
    :func:`r2f.engine.models.head.answer_forward`): ``sign x mean answer-token NLL``
    (:func:`r2f.engine.grads._sign`); with ``token_beta`` each token's NLL is weighted by ``p^beta``
    (held fixed: the weighted gradient ascent, WGA, of Wang et al., ICLR 2025), so tokens already forgotten stop
    pulling and the step concentrates on what the model still knows."""
    nll = states.token_nll()
    if token_beta is None:
        return _sign(objective) * states.per_row_mean(nll).sum()
    if objective != "ascent":
        raise ValueError(f"token_beta weights an ascent on the answer NLL; objective '{objective}' has no such loss")
    w = (-token_beta * nll.detach()).exp()
    return _sign(objective) * states.per_row_mean(w * nll).sum()


def shard_batches(batches: Sequence[dict], seq_groups: Sequence[int], k: int) -> list[dict]:
    """The batches of :func:`group_batches` cut into at most ``k`` contiguous shards of whole batches
    (a group never straddles two batches, so never two shards), each with its sequences' group ids
    renumbered from 0 and its first group's index (``offset``)."""
    starts, pos = [], 0
    for b in batches:
        starts.append(pos)
        pos += b["input_ids"].shape[0]
    starts.append(pos)
    shards = []
    for part in split_even(len(batches), k):
        groups = list(seq_groups[starts[part.start]:starts[part.stop]])
        offset = groups[0] if groups else 0
        shards.append({"batches": list(batches[part.start:part.stop]),
                       "seq_groups": [g - offset for g in groups], "offset": offset})
    return shards
