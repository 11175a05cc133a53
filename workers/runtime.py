"""The models a worker process serves: loaded and warmed before it consumes, stopped at exit."""

from __future__ import annotations

import logging
import threading

from pydantic import ValidationError
from sqlmodel import Session

from onnxq.errors import InvalidModelConfig, ModelInactive, UnknownModel
from onnxq.settings import get_settings
from schema.db import get_engine
from schema.registry import active_models
from schema.tables import DeploymentStatus, PytorchModel
from workers.inference import ModelRunner
from workers.modelconfig import ModelConfig
from workers.repository import check_file
from workers.sessions import load_session
from workers.writer import BatchWriter

log = logging.getLogger(__name__)


class Runtime:
    """One `ModelRunner` per served model version in this process."""

    def __init__(self) -> None:
        self._runners: dict[int, ModelRunner] = {}
        self._lock = threading.Lock()
        self._writer: BatchWriter | None = None

    @property
    def writer(self) -> BatchWriter:
        """The process's batch writer, shared by every model (the audit chain is one)."""
        if self._writer is None:
            self._writer = BatchWriter(get_settings().audit_key_bytes())
            self._writer.start()
        return self._writer

    def load_active(self) -> list[ModelRunner]:
        """Load and warm every active model; a model that fails to load is logged and skipped."""
        with Session(get_engine()) as session:
            models = active_models(session)
        if not models:
            log.warning("no active models are registered: run `onnxq models sync`")
        for model in models:
            try:
                self._load(model)
            except Exception:
                log.exception("model %s could not be loaded; its jobs will fail until it can", model.ref)
        return list(self._runners.values())

    def _load(self, model: PytorchModel) -> ModelRunner:
        assert model.id is not None
        settings = get_settings()
        path = check_file(model, settings.model_dir)
        try:
            config = ModelConfig.model_validate(model.config)
        except ValidationError as exc:
            raise InvalidModelConfig(
                f"{model.ref}: its registered configuration is invalid ({exc.errors()[0]['msg']})."
            ) from exc
        loaded = load_session(path, config, ref=model.ref)
        runner = ModelRunner(model, config, loaded, self.writer)
        runner.start()
        self._runners[model.id] = runner
        return runner

    def runner(self, model_id: int) -> ModelRunner:
        """The runner for a model, loading it now if it was registered after this worker started."""
        runner = self._runners.get(model_id)
        if runner is not None:
            return runner
        with self._lock:
            if model_id in self._runners:
                return self._runners[model_id]
            with Session(get_engine()) as session:
                model = session.get(PytorchModel, model_id)
            if model is None:
                raise UnknownModel(f"Model id {model_id} is not registered.")
            if model.deployment_status != DeploymentStatus.ACTIVE:
                raise ModelInactive(f"Model {model.ref} is {model.deployment_status}, not active.")
            return self._load(model)

    def stop(self) -> None:
        """Stop every batcher (each finishes the batch in hand), then commit what they wrote."""
        for runner in self._runners.values():
            runner.stop()
        self._runners.clear()
        if self._writer is not None:
            self._writer.stop()
            self._writer = None


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime (created on first use)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime
