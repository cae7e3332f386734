"""Where a run that trains in segments stands, read back from its MLflow run once
(`StartingPoint`): its last checkpoint (model and optimizer state) and the validation
accuracies it logged so far."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

    from study.tracking.runs import RunTracker
    from study.training.fit import Segment


LAST_CHECKPOINT = "checkpoints/last.keras"  # model and optimizer state: where a segment resumes


def load_last_checkpoint(tracker: RunTracker, folder: Path) -> keras.Model:
    """The run's last checkpoint, compiled, with its optimizer state (from any machine: the
    checkpoint is an artifact of the run)."""
    import keras

    destination = folder / "resume"
    destination.mkdir(parents=True, exist_ok=True)
    local = tracker.client.download_artifacts(tracker.run_id, LAST_CHECKPOINT, str(destination))
    return keras.saving.load_model(local)


def best_checkpoint(tracker: RunTracker, folder: Path) -> Path:
    """The run's best model: this run's, or an earlier segment's that this one did not beat."""
    local = folder / "checkpoints" / "best.keras"
    if local.exists():
        return local
    destination = folder / "resume"
    destination.mkdir(parents=True, exist_ok=True)
    return Path(tracker.client.download_artifacts(tracker.run_id, "checkpoints/best.keras", str(destination)))


def earlier_points(tracker: RunTracker, key: str, up_to: int) -> list[tuple[int, float]]:
    """The (step, value) points of metric `key` the run logged up to metric step `up_to`, in order.

    Points past it come from an attempt that died before its segment ended; the retry logs
    them again, with the same values (training is deterministic).
    """
    history = tracker.client.get_metric_history(tracker.run_id, key)
    points = {metric.step: metric.value for metric in sorted(history, key=lambda m: m.timestamp)}
    return sorted((step, value) for step, value in points.items() if step <= up_to)


def trained_steps(model: keras.Model) -> int:
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


@dataclass(frozen=True)
class StartingPoint:
    """Where a run's training starts, read once: its model, the optimizer steps it has already
    trained, the (metric step, val_accuracy) points it logged up to there, and those of the
    metric early stopping watches. A new run, or a first segment, starts from a compiled model
    at step 0 with nothing logged."""

    model: keras.Model
    first_step: int = 0
    earlier: tuple[tuple[int, float], ...] = ()
    monitored: tuple[tuple[int, float], ...] = ()

    @classmethod
    def resumed(
        cls,
        tracker: RunTracker,
        folder: Path,
        segment: Segment,
        steps_per_epoch: int,
        monitor: str | None = None,
    ) -> StartingPoint:
        """The run's last checkpoint and its curves so far, from its MLflow run."""
        model = load_last_checkpoint(tracker, folder)
        first_step = trained_steps(model)
        if not first_step:
            return cls(model)
        up_to = segment.label(first_step, steps_per_epoch)
        earlier = tuple(earlier_points(tracker, "val_accuracy", up_to))
        watched = (
            earlier if monitor in (None, "val_accuracy") else tuple(earlier_points(tracker, monitor, up_to))
        )
        return cls(model, first_step, earlier, watched)

    @property
    def best_so_far(self) -> float | None:
        return max((value for _, value in self.earlier), default=None)
