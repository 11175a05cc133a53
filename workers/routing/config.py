"""router.toml: scoring weights, thresholds and term lists, backends and tiers.

Read once per process (`get_router_config`), validated by pydantic: a wrong config fails loudly
at start with the field that is wrong, not at the first query.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onnxq.errors import PermanentError
from onnxq.settings import get_settings

BACKEND_NAME_MAX = 100  # route logs and A/B tests store backend names in columns this wide


class InvalidRouterConfig(PermanentError):
    code = "invalid_router_config"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WordBucket(Strict):
    """Queries with fewer than `below` words score `points` (the first bucket that fits wins)."""

    below: int = Field(gt=0)
    points: int


class TermRule(Strict):
    """A list of terms; a query containing one scores `points` (per distinct term matched, up to
    `max_hits` terms)."""

    points: int
    max_hits: int = Field(default=1, ge=1)
    terms: list[str] = Field(min_length=1)


class Scoring(Strict):
    word_buckets: list[WordBucket] = Field(min_length=1)
    long_points: int = Field(description="Points for a query with at least the last bucket's `below` words")
    rules: dict[str, TermRule]
    medium_at: int = Field(description="score >= medium_at is medium")
    complex_at: int = Field(description="score >= complex_at is complex")

    @model_validator(mode="after")
    def _ordered(self) -> Scoring:
        bounds = [bucket.below for bucket in self.word_buckets]
        if bounds != sorted(set(bounds)):
            raise ValueError("scoring.word_buckets: `below` must increase from one bucket to the next")
        if not self.medium_at <= self.complex_at:
            raise ValueError("scoring: medium_at must not be above complex_at")
        return self


class OnnxBackend(Strict):
    """A registered model, run on the job's image."""

    kind: Literal["onnx"]
    model: str = Field(description="NAME or NAME@VERSION in the model registry")
    cost_per_request: float = Field(default=0.0, ge=0)


class OpenAIBackend(Strict):
    """Any OpenAI-compatible chat-completions endpoint: a paid API, a gateway, vLLM, llama.cpp."""

    kind: Literal["openai"]
    base_url: str = Field(description="Up to and including /v1, e.g. https://api.openai.com/v1")
    model: str
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key")
    cost_per_request: float = Field(default=0.0, ge=0)
    cost_per_1k_tokens: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0)
    max_tokens: int = Field(default=512, gt=0)


Backend = Annotated[OnnxBackend | OpenAIBackend, Field(discriminator="kind")]


class Routing(Strict):
    local: list[str] = Field(min_length=1, description="Backends of the local tier, in order of preference")
    remote: list[str] = Field(min_length=1, description="Backends of the remote tier, in order of preference")
    medium_remote_percent: float = Field(
        ge=0, le=100, description="Share of medium queries sent to the remote tier, sticky per user"
    )
    cooldown_after_failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class RouterConfig(Strict):
    scoring: Scoring
    routing: Routing
    backends: dict[str, Backend]

    @model_validator(mode="after")
    def _backends_exist(self) -> RouterConfig:
        for name in self.backends:
            if not 1 <= len(name) <= BACKEND_NAME_MAX:
                raise ValueError(f"backends: a name must be 1–{BACKEND_NAME_MAX} characters, not {name!r}")
        for tier in ("local", "remote"):
            for name in getattr(self.routing, tier):
                if name not in self.backends:
                    raise ValueError(f"routing.{tier}: no backend named {name!r} under [backends]")
        return self


def load_router_config(path: Path) -> RouterConfig:
    """Parse and validate a router config file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRouterConfig(f"No router config at {path}: set ONNXQ_ROUTER_CONFIG.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRouterConfig(f"{path}: not valid TOML ({exc}).") from None
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRouterConfig(f"{path}: {where}: {first['msg']}") from None


def get_router_config() -> RouterConfig:
    """The process's router config (`ONNXQ_ROUTER_CONFIG`, default router.toml), read again
    when the file changes (so `onnxq router calibrate --apply` needs no restart)."""
    path = get_settings().router_config
    try:
        changed = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise InvalidRouterConfig(f"No router config at {path}: set ONNXQ_ROUTER_CONFIG.") from None
    return _cached(path.resolve(), changed)


@lru_cache(maxsize=4)
def _cached(path: Path, _changed: int) -> RouterConfig:
    return load_router_config(path)


def clear_router_config() -> None:
    """Forget cached configs (tests switch files under one process)."""
    _cached.cache_clear()
