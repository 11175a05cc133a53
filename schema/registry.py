"""Looking up registered models by the `name[@version]` references users write."""

from __future__ import annotations

import time

from sqlmodel import Session, col, select

from onnxq.errors import ModelInactive, UnknownModel
from schema.db import get_engine
from schema.tables import DeploymentStatus, PytorchModel


def split_ref(ref: str) -> tuple[str, str | None]:
    """`"name@version"` → `("name", "version")`; `"name"` → `("name", None)`."""
    name, _, version = ref.strip().partition("@")
    if not name:
        raise UnknownModel("The model reference is empty: give NAME or NAME@VERSION.")
    return name, version or None


def version_key(version: str) -> tuple[int, str]:
    """Sort key that puts version "10" after "9" and keeps non-numeric versions ordered too."""
    return (int(version), "") if version.isdigit() else (-1, version)


def resolve_model(session: Session, ref: str, *, require_active: bool = True) -> PytorchModel:
    """The model a reference names: the given version, else the newest active one."""
    name, version = split_ref(ref)
    rows = session.exec(select(PytorchModel).where(col(PytorchModel.model_name) == name)).all()
    if not rows:
        raise UnknownModel(
            f"No model named {name!r} is registered. Run `onnxq models list` to see the registered "
            "models, or `onnxq models sync` after adding one to the model repository."
        )
    if version is not None:
        matches = [row for row in rows if row.model_version == version]
        if not matches:
            known = ", ".join(sorted((row.model_version for row in rows), key=version_key))
            raise UnknownModel(f"Model {name!r} has no version {version!r} (registered: {known}).")
        model = matches[0]
        if require_active and model.deployment_status != DeploymentStatus.ACTIVE:
            raise ModelInactive(f"Model {model.ref} is {model.deployment_status}, not active.")
        return model
    active = [row for row in rows if row.deployment_status == DeploymentStatus.ACTIVE]
    if not active:
        if require_active:
            raise ModelInactive(f"Model {name!r} has no active version.")
        active = list(rows)
    return max(active, key=lambda row: version_key(row.model_version))


def active_models(session: Session) -> list[PytorchModel]:
    """Every active ONNX model version, in a stable order."""
    rows = session.exec(
        select(PytorchModel)
        .where(col(PytorchModel.deployment_status) == DeploymentStatus.ACTIVE.value)
        .where(col(PytorchModel.model_type) == "onnx")
        .order_by(col(PytorchModel.model_name), col(PytorchModel.id))
    ).all()
    return list(rows)


# Registry lookups are cached this long per process: a model switched off stops taking jobs
# within this time, and a busy producer saves a query per job.
MODEL_CACHE_TTL_S = 5.0
_model_cache: dict[str, tuple[float, PytorchModel]] = {}


def cached_model(ref: str) -> PytorchModel:
    """`resolve_model` for `ref`, cached for `MODEL_CACHE_TTL_S` seconds."""
    now = time.monotonic()
    hit = _model_cache.get(ref)
    if hit is not None and now - hit[0] < MODEL_CACHE_TTL_S:
        return hit[1]
    with Session(get_engine(), expire_on_commit=False) as session:
        model = resolve_model(session, ref)
        session.expunge(model)
    _model_cache[ref] = (now, model)
    return model


def clear_model_cache() -> None:
    """Forget cached registry lookups (tests switch databases under one process)."""
    _model_cache.clear()
