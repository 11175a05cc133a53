"""Running a routing decision: the decided backend first, then fallbacks, until one answers.

A remote failure (timeout, 429, 5xx, connection refused) falls back to a local backend that can
serve the query; a local backend that cannot serve it (no image, model not available) falls back
to the remote tier. Each remote failure counts towards that backend's cooldown. `served_by` is
always the backend that really answered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxq.errors import OnnxqError, PermanentError
from onnxq.images import image_limits
from schema.registry import cached_model
from workers.preprocess import preprocess
from workers.routing import cooldown
from workers.routing.config import OnnxBackend, OpenAIBackend, RouterConfig
from workers.routing.decide import Tier, tier_of
from workers.routing.remote import BackendFailed, call_remote
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


class CannotServe(Exception):
    """A backend that cannot take this query at all (no image for an image model, model down)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AllBackendsFailed(PermanentError):
    code = "all_backends_failed"


@dataclass(frozen=True)
class Served:
    """One backend's answer."""

    backend: str
    tier: Tier
    answer: str
    cost: float
    latency_ms: float
    details: dict[str, Any]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model_id: int | None = None  # the registered model, when a local ONNX backend answered


@dataclass(frozen=True)
class RouteOutcome:
    served: Served
    fallback_used: bool
    fallback_reason: str | None


def plan(config: RouterConfig, decided: str) -> tuple[list[str], list[str]]:
    """The order to try (the decided backend, the rest of its tier, then the other tier) and the
    backends left out because they are cooling down. If every backend is cooling down, the
    decided one is tried anyway: a request is never refused only for that."""
    tier = tier_of(config, decided)
    other: Tier = "remote" if tier == "local" else "local"
    rest = [name for name in getattr(config.routing, tier) if name != decided]
    order = [decided, *rest, *getattr(config.routing, other)]
    ready = [name for name in order if cooldown.available(name)]
    return (ready or [decided]), [name for name in order if name not in ready]


def execute(config: RouterConfig, decided: str, query: str, image: bytes | None) -> RouteOutcome:
    """Serve `query` (and its optional image) starting with backend `decided`.

    Raises `AllBackendsFailed` with every backend's reason when none could answer.
    """
    order, cooling = plan(config, decided)
    reasons = [f"{decided}: cooling_down"] if decided in cooling and decided not in order else []
    for name in order:
        try:
            served = serve(config, name, query, image)
        except CannotServe as exc:
            reasons.append(f"{name}: {exc.reason}")
            continue
        except BackendFailed as exc:
            entered = cooldown.record_failure(name, config.routing)
            reasons.append(f"{name}: {exc.reason}")
            log.warning("backend %s failed (%s)%s", name, exc.reason, "; cooling down" if entered else "")
            continue
        if isinstance(config.backends[name], OpenAIBackend):
            cooldown.record_success(name)
        return RouteOutcome(served, fallback_used=name != decided, fallback_reason="; ".join(reasons) or None)
    raise AllBackendsFailed("No backend could answer: " + "; ".join(reasons) + ".")


def serve(config: RouterConfig, name: str, query: str, image: bytes | None) -> Served:
    """Ask one backend."""
    spec = config.backends[name]
    tier = tier_of(config, name)
    if isinstance(spec, OnnxBackend):
        return _serve_onnx(name, tier, spec, image)
    answer = call_remote(name, spec, query, image)
    return Served(
        backend=name,
        tier=tier,
        answer=answer.answer,
        cost=answer.cost,
        latency_ms=answer.latency_ms,
        details={"attempts": answer.attempts},
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )


def _serve_onnx(name: str, tier: Tier, spec: OnnxBackend, image: bytes | None) -> Served:
    """Classify the job's image with a registered model (one `session.run`; routing jobs do not
    wait for a batch)."""
    if image is None:
        raise CannotServe("no_image")
    started = time.perf_counter()
    try:
        model = cached_model(spec.model)
        assert model.id is not None
        runner = get_runtime().runner(model.id)
        tensor = preprocess(image, runner.config.input, **image_limits())
        probs = runner.loaded.run(tensor[None])[0]
    except OnnxqError as exc:
        raise CannotServe(exc.code) from None
    except Exception as exc:
        # The runtime itself failed (a bad input for the graph, out of GPU memory): the remote
        # tier may still answer, so this is a fallback, not a retry of the whole job.
        log.warning("backend %s: the model failed (%s)", name, type(exc).__name__)
        raise CannotServe("inference_failed") from None
    if not np.isfinite(probs).all():
        raise CannotServe("inference_failed")
    labels = runner.config.labels
    best = int(np.argmax(probs))
    return Served(
        backend=name,
        tier=tier,
        answer=f"{labels[best]} ({float(probs[best]):.2%})",
        cost=spec.cost_per_request,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        details={
            "model": model.ref,
            "prediction": labels[best],
            "confidence": float(probs[best]),
            "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
        },
        model_id=model.id,
    )
