"""The model repository on disk (`onnx/<name>/<version>/model.onnx` + `model.toml`) and its sync
into the `pytorch_models` registry."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from onnxq.errors import InvalidModelConfig, ModelChecksumMismatch, ModelFileMissing
from schema.tables import PytorchModel, utcnow
from workers.modelconfig import ModelConfig, load_config

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "model.toml"
HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def graph_shapes(path: Path) -> tuple[list[Any], list[Any]]:
    """The first input's and first output's shapes as the graph declares them.

    Dynamic dimensions come back as their symbolic names (e.g. "batch") or None.
    """
    import onnxruntime as ort  # heavy; only the commands that read models need it

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(session.get_inputs()[0].shape), list(session.get_outputs()[0].shape)


@dataclass(frozen=True)
class ModelFile:
    """One version directory of the repository, read and validated."""

    name: str
    version: str
    path: Path
    relative_path: str
    config: ModelConfig
    sha256: str


def scan(model_dir: Path) -> tuple[list[ModelFile], list[str]]:
    """Every valid model version under `model_dir`, and one message per directory skipped."""
    found: list[ModelFile] = []
    problems: list[str] = []
    if not model_dir.is_dir():
        return found, [f"{model_dir}: the model repository does not exist"]
    for version_dir in sorted(p for p in model_dir.glob("*/*") if p.is_dir()):
        onnx_path, toml_path = version_dir / MODEL_FILE, version_dir / CONFIG_FILE
        if not onnx_path.is_file() or not toml_path.is_file():
            problems.append(f"{version_dir}: needs both {MODEL_FILE} and {CONFIG_FILE}; skipped")
            continue
        try:
            config = load_config(toml_path)
        except InvalidModelConfig as exc:
            problems.append(f"{exc.message}; skipped")
            continue
        found.append(
            ModelFile(
                name=version_dir.parent.name,
                version=version_dir.name,
                path=onnx_path,
                relative_path=onnx_path.relative_to(model_dir).as_posix(),
                config=config,
                sha256=file_sha256(onnx_path),
            )
        )
    return found, problems


@dataclass(frozen=True)
class SyncReport:
    """What `sync` did, per model reference."""

    added: list[str]
    updated: list[str]
    unchanged: list[str]
    problems: list[str]


def sync(session: Session, model_dir: Path) -> SyncReport:
    """Register every model of the repository; update rows whose file or config changed."""
    files, problems = scan(model_dir)
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for model_file in files:
        ref = f"{model_file.name}@{model_file.version}"
        try:
            input_shape, output_shape = graph_shapes(model_file.path)
        except Exception as exc:  # onnxruntime raises its own types for broken graphs
            problems.append(f"{model_file.path}: onnxruntime cannot load it ({exc}); skipped")
            continue
        config = model_file.config
        if output_shape and isinstance(output_shape[-1], int) and output_shape[-1] != len(config.labels):
            problems.append(
                f"{ref}: the graph has {output_shape[-1]} outputs but model.toml lists "
                f"{len(config.labels)} labels; skipped"
            )
            continue
        values: dict[str, Any] = {
            "model_type": "onnx",
            "file_path": model_file.relative_path,
            "domain": config.domain,
            "input_shape": input_shape,
            "output_shape": output_shape,
            "accuracy": config.accuracy,
            "sha256": model_file.sha256,
            "labels": config.labels,
            "config": config.model_dump(mode="json"),
        }
        row = session.exec(
            select(PytorchModel)
            .where(col(PytorchModel.model_name) == model_file.name)
            .where(col(PytorchModel.model_version) == model_file.version)
        ).first()
        if row is None:
            session.add(PytorchModel(model_name=model_file.name, model_version=model_file.version, **values))
            added.append(ref)
        elif any(getattr(row, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            session.add(row)
            updated.append(ref)
        else:
            unchanged.append(ref)
    session.flush()
    return SyncReport(added, updated, unchanged, problems)


def check_file(model: PytorchModel, model_dir: Path) -> Path:
    """The model's file, refused when it is missing or its sha256 no longer matches the registry."""
    path = model_dir / model.file_path
    if not path.is_file():
        raise ModelFileMissing(f"{model.ref}: {path} does not exist on this host.")
    actual = file_sha256(path)
    if actual != model.sha256:
        raise ModelChecksumMismatch(
            f"{model.ref}: {path} has sha256 {actual[:12]}…, the registry says {model.sha256[:12]}…; "
            "refusing to serve it. Run `onnxq models sync` if the change is intended."
        )
    return path
