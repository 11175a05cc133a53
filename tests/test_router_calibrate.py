"""`onnxq router calibrate`: thresholds from recorded scores, shown, written only with --apply."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from onnxq.cli import app as cli
from schema.db import session_scope
from schema.tables import RouteLog, utcnow
from tests.conftest import REPO
from workers.routing.calibrate import calibrate, remote_share, write_thresholds
from workers.routing.config import InvalidRouterConfig, load_router_config

SCORES = [10, 10, 10, 10, 30, 30, 30, 70, 70, 70]
runner = CliRunner()


def test_remote_share_counts_complex_and_the_medium_split() -> None:
    # 3 complex + half of 3 medium, of 10
    assert remote_share(SCORES, 30, 60, 50) == pytest.approx(0.45)
    assert remote_share(SCORES, 30, 60, 0) == pytest.approx(0.3)
    assert remote_share([], 30, 60, 50) == 0.0


@pytest.mark.parametrize(
    ("target", "proposed", "share"),
    [
        (0.3, (31, 61), 0.3),  # the medium band moves above the 30s: only the 70s go remote
        (0.45, (30, 60), 0.45),  # already right: unchanged
        (1.0, (-20, 10), 1.0),  # everything complex
        # As low as it goes while the band keeps its width: the 70s are medium, half of them remote
        (0.0, (41, 71), 0.15),
    ],
)
def test_calibration_picks_the_closest_thresholds(target: float, proposed: tuple[int, int], share: float) -> None:
    config = load_router_config(REPO / "router.toml")
    result = calibrate(SCORES, config, target)
    assert result.proposed == proposed
    assert result.proposed_share == pytest.approx(share)
    assert result.current == (30, 60) and result.current_share == pytest.approx(0.45)


def test_writing_thresholds_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    shutil.copy(REPO / "router.toml", path)
    before = path.read_text()
    write_thresholds(path, 25, 55)
    after = path.read_text()
    config = load_router_config(path)
    assert (config.scoring.medium_at, config.scoring.complex_at) == (25, 55)
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 2 and all("# " in b for _, b in changed)  # comments kept
    with pytest.raises(InvalidRouterConfig):
        path.write_text("[scoring]\n")
        write_thresholds(path, 1, 2)


def test_the_command_shows_and_applies_only_with_apply(
    migrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "router.toml"
    shutil.copy(REPO / "router.toml", path)
    monkeypatch.setenv("ONNXQ_ROUTER_CONFIG", str(path))
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    rows = [
        {
            "job_id": uuid.uuid4().hex,
            "created_at": utcnow(),
            "input_hash": "0" * 64,
            "score": score,
            "complexity": "simple",
            "reason": "simple-query",
            "decided_backend": "chest-xray",
            "fallback_used": False,
            "cost": 0.0,
            "all_remote_cost": 0.0,
        }
        for score in SCORES
    ]
    with session_scope() as session:
        session.execute(insert(RouteLog), rows)
    shown = runner.invoke(cli, ["router", "calibrate", "--remote-share", "0.3"])
    assert shown.exit_code == 0, shown.output
    assert "proposed: medium_at = 31, complex_at = 61" in shown.stdout and "not written" in shown.stdout
    assert load_router_config(path).scoring.complex_at == 60
    applied = runner.invoke(cli, ["router", "calibrate", "--remote-share", "0.3", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert load_router_config(path).scoring.complex_at == 61
    # The running process sees the new thresholds without a restart
    from workers.routing.config import get_router_config

    assert get_router_config().scoring.complex_at == 61
    empty = runner.invoke(cli, ["router", "calibrate", "--remote-share", "0.3", "--since", "2999-01-01"])
    assert empty.exit_code == 1 and "nothing to calibrate" in empty.output
