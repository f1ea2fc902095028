"""The operator's metrics as the alerts read them: a pipeline's series go with the pipeline."""

from __future__ import annotations

from prometheus_client import generate_latest

from mlcd.domain.rollout import RolloutState
from mlcd.domain.status import ModelPipelineStatus
from mlcd.metrics.operator import OperatorMetrics


def series(metrics: OperatorMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(f"{name}{{")]


def test_a_deleted_pipelines_rollout_leaves_no_series():
    """Else MlcdRolloutRolledBack would fire for a pipeline that no longer exists."""
    metrics = OperatorMetrics()
    rolled_back = RolloutState(
        phase="RolledBack", candidate="2", stable="1", started_at="2026-01-01T00:00:00Z"
    )
    for name in ("gone", "kept"):
        metrics.observe("team-a", name, ModelPipelineStatus(rollout=rolled_back))
    assert len(series(metrics, "mlcd_rollout_phase")) == 16  # 8 phases, 2 pipelines
    metrics.forget("team-a", "gone")
    for name in ("mlcd_rollout_phase", "mlcd_rollout_canary_weight", "mlcd_rollout_failed_checks"):
        left = series(metrics, name)
        assert left and all('pipeline="kept"' in line for line in left), (name, left)
    assert 'phase="RolledBack",pipeline="kept"} 1.0' in "\n".join(
        series(metrics, "mlcd_rollout_phase")
    )
