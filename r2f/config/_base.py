"""What every config section shares: strict, frozen pydantic models and the config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from r2f.errors import R2FError


class ConfigError(R2FError, ValueError):
    """A configuration file or value is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
