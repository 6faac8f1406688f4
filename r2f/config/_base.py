"""What every config section shares: strict, frozen pydantic models and the config error."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from r2f.errors import R2FError


class ConfigError(R2FError, ValueError):
    """A configuration file or value is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag; ARM's
    ``bf16``). Without it PyTorch emulates bfloat16 and autocast is many times slower than float32
    (bench/results/bf16_speed.md), so ``precision: auto`` means bf16 only where this is true."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path(cpuinfo).read_text().splitlines()
                      if ln.startswith(("flags", "Features"))), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def resolve_precision(value: str) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bfloat16, else ``fp32``; other values unchanged. Resolved
    when the config is loaded, so caches, journals and results name the precision really used."""
    if value != "auto":
        return value
    return "bf16" if native_bf16() else "fp32"
