"""Gradient decoders: from a module's LoRA gradient (and activation statistics) to a full-weight
gradient estimate. All decoders are per module and shape-agnostic, so a decoder trained on a narrow
proxy applies unchanged to a wider, deeper target (see docs/method.md).

* ``lora_only``: the direction of the merged LoRA step itself, ``s * grad_B @ A``.
* ``analytic``:  least squares from the LoRA factors alone, ``grad_B/s @ (A A^T)^-1 @ A``.
* ``prior``:     posterior mean under a Gaussian prior whose row covariance is the module's input
                 activation Gram ``K``: ``Y (A K A^T)^-1 A K`` with ``Y = grad_B / s = G A^T``.
* ``learned``:   the same with a learned spectral prior ``K_f = V diag(f(lambda)) V^T``; ``f`` is a
                 small MLP applied to each eigenvalue (relative log-eigenvalue, relative rank, module
                 kind, relative depth), trained on proxy (LoRA-grad, full-grad) pairs with MSE + a
                 cosine term. It starts equal to ``prior`` (zero-initialised last layer).

With A = top-r eigenvectors of K (``lora.init: activation``) ``prior`` and ``learned`` reduce exactly
to ``analytic`` (an orthogonal projection), so they only differ from it for other A.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from r2f.atomic import atomic_dir
from r2f.engine.grads import LoraGrad, ModuleInfo
from r2f.engine.grams import per_distinct
from r2f.errors import R2FError

if TYPE_CHECKING:
    import torch

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DECODERS = ("lora_only", "analytic", "prior", "learned")


class DecoderError(R2FError, ValueError):
    """A decoder cannot be loaded or applied to this model (the message says why)."""


class Spectrum:
    """One activation Gram and, on first use, its eigendecomposition (``prior``/``learned`` need it).

    Modules that read the same input (q/k/v, gate/up) share one Spectrum, so the Gram is decomposed
    once per input, and a decomposed Spectrum drops its Gram (the eigenpairs replace it): a held
    sketch costs one ``in x in`` basis per distinct input, not a Gram plus a basis per module."""

    def __init__(self, gram):
        self._gram, self._eig = gram, None

    def eig(self) -> tuple:
        if self._eig is None:
            import torch

            gram = self._gram.dense() if hasattr(self._gram, "dense") else self._gram
            evals, evecs = torch.linalg.eigh(gram.double())
            order = torch.argsort(evals, descending=True)
            self._eig = (evals[order].clamp(min=0).float(), evecs[:, order].float())
            self._gram = None
        return self._eig


@dataclass
class Sketch:
    """What a decoder sees for one module of one request: its LoRA gradient and activation Gram
    (held by a :class:`Spectrum`, shared by the modules that read the same input)."""

    info: ModuleInfo
    lora: LoraGrad
    spectrum: Spectrum

    @property
    def evals(self) -> torch.Tensor:
        """Eigenvalues of the activation Gram, descending (in,)."""
        return self.spectrum.eig()[0]

    @property
    def evecs(self) -> torch.Tensor:
        """Matching eigenvectors as columns (in x in)."""
        return self.spectrum.eig()[1]


def make_sketch(info: ModuleInfo, lora: LoraGrad, gram) -> Sketch:
    return Sketch(info, lora, Spectrum(gram))


def sketches(infos, lora: dict, grams: dict) -> dict[str, Sketch]:
    """One :class:`Sketch` per module; modules whose Grams are one tensor (a shared input) share one
    :class:`Spectrum`, so its eigendecomposition is computed and held once."""
    spectra = per_distinct({i.name: grams[i.name] for i in infos}, Spectrum)
    return {i.name: Sketch(i, lora[i.name], spectra[i.name]) for i in infos}


def _prior_factors(sk: Sketch, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    A, Y = sk.lora.A, sk.lora.grad_B / sk.lora.scaling
    AV = A @ sk.evecs                     # r x in
    AVf = AV * f                          # r x in
    M = AVf @ AV.T                        # r x r  (= A K_f A^T)
    M = M + 1e-6 * M.diagonal().mean().abs().clamp(min=1e-12) * torch.eye(M.shape[0])
    return Y, torch.linalg.solve(M, AVf) @ sk.evecs.T


def factors_fixed(kind: str, sk: Sketch) -> tuple[torch.Tensor, torch.Tensor]:
    """The untrained decoders, as rank-r factors (U: out x r, V: r x in) of the decoded gradient."""
    import torch

    A, gB, s = sk.lora.A, sk.lora.grad_B, sk.lora.scaling
    if kind == "lora_only":
        return s * gB, A
    if kind == "analytic":
        return gB / s, torch.linalg.solve(A @ A.T, A)
    if kind == "prior":
        return _prior_factors(sk, _rel(sk.evals))
    raise DecoderError(f"unknown decoder '{kind}'; expected one of {DECODERS}")


def _rel(evals: torch.Tensor) -> torch.Tensor:
    return evals / evals[0].clamp(min=1e-12) + 1e-6


def _features(sk: Sketch) -> torch.Tensor:
    import torch

    n = sk.evals.shape[0]
    rel = _rel(sk.evals)
    kind = torch.zeros(n, len(KINDS))
    kind[:, KINDS.index(sk.info.kind)] = 1.0
    return torch.cat([
        (torch.log(rel) / 10.0)[:, None],
        (torch.arange(n) / max(1, n - 1)).float()[:, None],
        kind,
        torch.full((n, 1), sk.info.depth),
    ], dim=1)


class LearnedDecoder:
    """Learned spectral prior; a tiny MLP over per-eigenvalue features (width-agnostic)."""

    def __init__(self, hidden: int = 64, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.hidden = hidden
        self.net = torch.nn.Sequential(
            torch.nn.Linear(len(KINDS) + 3, hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)
        self.meta: dict = {}

    def check(self, sk: Sketch) -> None:
        if sk.info.kind not in KINDS:
            raise DecoderError(f"module {sk.info.name}: kind '{sk.info.kind}' unknown to the decoder ({KINDS})")

    def factors(self, sk: Sketch) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(sk)
        g = self.net(_features(sk)).squeeze(1).clamp(-20, 20)
        return _prior_factors(sk, _rel(sk.evals) * g.exp())

    def decode(self, sk: Sketch) -> torch.Tensor:
        u, v = self.factors(sk)
        return u @ v

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        with atomic_dir(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, tmp / "decoder.safetensors")
            (tmp / "decoder.json").write_text(json.dumps({"hidden": self.hidden, "kinds": list(KINDS), **self.meta},
                                                         indent=2, sort_keys=True))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LearnedDecoder:
        from safetensors.torch import load_file

        path = Path(path)
        meta_p, w_p = path / "decoder.json", path / "decoder.safetensors"
        if not meta_p.is_file() or not w_p.is_file():
            raise DecoderError(f"{path}: not a decoder folder (needs decoder.json and decoder.safetensors)")
        meta = json.loads(meta_p.read_text())
        if list(meta.get("kinds", [])) != list(KINDS):
            raise DecoderError(f"{path}: decoder was trained for module kinds {meta.get('kinds')}, not {KINDS}")
        dec = cls(hidden=int(meta["hidden"]))
        try:
            dec.net.load_state_dict(load_file(w_p))
        except RuntimeError as exc:
            raise DecoderError(f"{path}: weights do not match decoder.json: {exc}") from exc
        dec.meta = meta
        return dec


def check_family(decoder, model) -> None:
    """A learned decoder transfers across widths and depths (its features are scale-free), not
    across model families: refuse a target whose ``model_type`` differs from the proxy's it was
    trained on (recorded in decoder.json since the decoder has recorded it)."""
    meta = getattr(decoder, "meta", None) or {}
    trained = meta.get("model_type")
    target = getattr(getattr(model, "config", None), "model_type", None)
    if trained and target and trained != target:
        raise DecoderError(f"decoder trained on a '{trained}' proxy cannot decode gradients of a '{target}' "
                           "target; train one on a proxy of the target's family (`r2f decoder train`)")


def decode(decoder: str | LearnedDecoder, sk: Sketch) -> torch.Tensor:
    u, v = decode_factors(decoder, sk)
    return u @ v


def decode_factors(decoder: str | LearnedDecoder, sk: Sketch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)`` with ``decode(decoder, sk) == U @ V``: every decoder's output has rank <= r, so
    R2F keeps its update as factors and never holds a dense gradient-sized tensor per module."""
    import torch

    with torch.no_grad():
        if isinstance(decoder, LearnedDecoder):
            return decoder.factors(sk)
        return factors_fixed(decoder, sk)


def gram_weighting(cfg, decoder) -> tuple[float, float] | None:
    """The activation-Gram token weighting R2F uses: the decoder's fitted one, else uniform."""
    if cfg.lora.weighting == "uniform":
        return None
    fitted = getattr(decoder, "meta", {}).get("weighting")
    return tuple(fitted) if fitted else None


def pair_loss(pred: torch.Tensor, true: torch.Tensor, cosine_weight: float) -> torch.Tensor:
    """Scale-free MSE (||pred - G||^2 / ||G||^2) plus ``cosine_weight * (1 - cos)``."""
    import torch.nn.functional as F

    denom = true.pow(2).sum().clamp(min=1e-30)
    mse = (pred - true).pow(2).sum() / denom
    cos = F.cosine_similarity(pred.flatten(), true.flatten(), dim=0)
    return mse + cosine_weight * (1 - cos)


def train_decoder(pairs: list[tuple[Sketch, torch.Tensor]], hidden: int, steps: int, lr: float,
                  cosine_weight: float, seed: int = 0, batch: int = 16, progress=None) -> tuple[LearnedDecoder, list[float]]:
    """Adam on random minibatches of (sketch, true gradient) pairs. Returns decoder and loss curve."""
    import torch

    if not pairs:
        raise DecoderError("no training pairs")
    dec = LearnedDecoder(hidden, seed)
    opt = torch.optim.Adam(dec.net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(steps):
        idx = torch.randint(len(pairs), (min(batch, len(pairs)),), generator=gen).tolist()
        loss = sum(pair_loss(dec.decode(pairs[i][0]), pairs[i][1], cosine_weight) for i in idx) / len(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
        if progress:
            progress()
    return dec, curve


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
