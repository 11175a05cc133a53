"""What a `model.toml` beside a `model.onnx` says: labels, preprocessing and batching."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from onnxq.errors import InvalidModelConfig


class InputSpec(BaseModel):
    """How an image becomes the model's input tensor (float32 NCHW)."""

    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    color_mode: Literal["L", "RGB"] = "RGB"
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _channels_match(self) -> InputSpec:
        channels = 1 if self.color_mode == "L" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} value(s) for color_mode {self.color_mode}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3


class OutputSpec(BaseModel):
    """What the first output holds: raw logits (softmax applied by onnxq) or probabilities."""

    kind: Literal["logits", "probabilities"] = "logits"


class BatchingSpec(BaseModel):
    """Micro-batching limits for this model."""

    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)


class ModelConfig(BaseModel):
    """The whole of a `model.toml`."""

    description: str = ""
    domain: str = "general"
    labels: list[str] = Field(min_length=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    input: InputSpec
    output: OutputSpec = OutputSpec()
    batching: BatchingSpec = BatchingSpec()


def load_config(path: Path) -> ModelConfig:
    """Parse and validate a `model.toml`; errors name the file and the bad key."""
    from onnxq.settings import get_settings

    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
        # What the file leaves out of [batching] comes from the settings; the registry row then
        # records the values in force.
        settings = get_settings()
        batching = raw.setdefault("batching", {})
        if isinstance(batching, dict):
            batching.setdefault("max_batch_size", settings.default_max_batch_size)
            batching.setdefault("max_wait_ms", settings.default_max_wait_ms)
        return ModelConfig.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidModelConfig(f"{path}: cannot read it as TOML ({exc}).") from exc
    except ValidationError as exc:
        raise InvalidModelConfig(f"{path}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
