"""Where a run that trains in segments stands, read back from its MLflow run: its last
checkpoint (model and optimizer state) and the validation accuracies it logged so far."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

    from study.tracking.runs import RunTracker


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


def earlier_val_accuracy(tracker: RunTracker, up_to: int) -> list[tuple[int, float]]:
    """The (step, val_accuracy) points the run logged up to metric step `up_to`, in order.

    Points past it come from an attempt that died before its segment ended; the retry logs
    them again, with the same values (training is deterministic).
    """
    history = tracker.client.get_metric_history(tracker.run_id, "val_accuracy")
    points = {metric.step: metric.value for metric in sorted(history, key=lambda m: m.timestamp)}
    return sorted((step, value) for step, value in points.items() if step <= up_to)
