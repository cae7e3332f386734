"""What the terminal shows while a study runs.

In a terminal, a live display (rich) under the scrolling output: one line per running trial
(its number, sampled values, epoch k/n, latest val_accuracy, elapsed time) and a study line
(done / pruned / failed, the best trial so far, elapsed time, an ETA from the trials finished so
far; with scheduler=asha, configurations done and the trials, first rungs and promotions, that
trained them). Above it, one permanent line per finished trial with its outcome. When stdout
is not a terminal (CI, `| tee`), the same events as plain lines: a trial started, an epoch
reported, a trial finished, and the study line after each finish and every minute.

Its input is what the driver reads each poll anyway: the study's FrozenTrials (workers report
val_accuracy after each epoch, so `len(trial.intermediate_values)` is the epoch reached) and the
trial counts.
"""

from __future__ import annotations

import datetime
import logging
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from study.core.names import METRIC, MLFLOW_RUN_ATTR
from study.reporting.leaderboard import (
    describe_config,
    format_value,
    space_targets,
    trial_config,
    trial_error,
)
from study.search.asha import Ladder, is_promotion, rung_of, was_needed
from study.search.budget import TrialCounts
from study.search.ranking import best_trial, trial_score

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PLAIN_STUDY_LINE_SECONDS = 60.0
REFRESHES_PER_SECOND = 2


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def elapsed(trial: FrozenTrial, now: datetime.datetime) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or now
    return (end - trial.datetime_start).total_seconds()


def latest_value(trial: FrozenTrial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


class StudyProgress:
    """Live display of a study; `update` once per poll, `close` at the end."""

    def __init__(
        self,
        name: str,
        n_trials: int,
        epochs: int | None,
        *,
        targets: Mapping[str, str] | None = None,
        workers: int = 1,
        log_folder: Path | None = None,
        console: Console | None = None,
        ladder: Ladder | None = None,
        deadline: float | None = None,
    ):
        self.name = name
        self.n_trials = n_trials
        self.epochs = epochs  # None: a step budget decides (trainer.max_steps)
        self.ladder = ladder  # scheduler=asha: a trial trains one segment of its configuration
        self.targets = dict(targets or {})  # Optuna param name -> the config key it sets
        self.workers = max(1, workers)
        self.deadline = deadline  # time.time() at study.timeout: no trial starts after it
        self.console = console or Console(highlight=False)
        self.live_mode = self.console.is_terminal
        self.start = time.time()
        self.announced: set[int] = set()  # finished trials already shown (or from earlier sessions)
        self.started: set[int] = set()
        self.epoch_shown: dict[int, int] = {}
        self.last_study_line = 0.0
        self.last_counts: TrialCounts | None = None
        self.done: int | None = None  # scheduler=asha: configurations done (what n_trials counts)
        self.live: Live | None = None
        self.first = True
        workers_text = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        logs = f"; worker logs: {log_folder}/worker_N.log" if log_folder else ""
        what = "configurations" if ladder is not None else "trials"  # what study.n_trials counts
        self._print(Text(f"study {name}: {n_trials} {what}, {workers_text}{logs}"))

    @classmethod
    def from_settings(
        cls,
        settings,
        epochs: int | None,
        workers: int,
        log_folder: Path | None = None,
        ladder: Ladder | None = None,
        deadline: float | None = None,
    ) -> StudyProgress:
        return cls(
            settings.study.name,
            settings.study.n_trials,
            epochs,
            targets=space_targets(settings.search_space),
            workers=workers,
            log_folder=log_folder,
            ladder=ladder,
            deadline=deadline,
        )

    # --- the poll ---------------------------------------------------------------------------

    def update(
        self, counts: TrialCounts, trials: list[FrozenTrial], force: bool = False, done: int | None = None
    ) -> None:
        """`done`: what study.n_trials counts, when not complete + pruned trials (asha)."""
        self.done = done if done is not None else self.done
        now = datetime.datetime.now()
        if self.first:
            self._skip_earlier_sessions(trials)
            self.first = False
        finished_now = False
        for trial in sorted(trials, key=lambda t: t.number):
            if trial.state in FINISHED and trial.number not in self.announced:
                self.announced.add(trial.number)
                self._print(self.finished_line(trial, trials, now))
                finished_now = True
            elif trial.state == TrialState.RUNNING and not self.live_mode:
                self._plain_running(trial, now)
        if self.live_mode:
            self._live().update(self.render(counts, trials, now))
            return
        due = time.time() - self.last_study_line >= PLAIN_STUDY_LINE_SECONDS
        if finished_now or due or (force and counts != self.last_counts):
            self._print(self.study_line(counts, trials, now))
            self.last_study_line, self.last_counts = time.time(), counts

    def close(self, counts: TrialCounts | None = None, trials: list[FrozenTrial] | None = None) -> None:
        """Stop the live display and leave the study line on the screen."""
        if self.live is not None:
            self._restore_logging()
            self.live.stop()
            self.live = None
            if counts is not None and trials is not None:
                self._print(self.study_line(counts, trials, datetime.datetime.now()))

    # --- lines --------------------------------------------------------------------------------

    def finished_line(self, trial: FrozenTrial, trials: list[FrozenTrial], now) -> Text:
        values = self.values(trial)
        took = format_duration(elapsed(trial, now))
        line = Text(f"trial {trial.number:>3} ")
        if trial.state == TrialState.COMPLETE:
            line.append("complete", style="green")
            line.append(f"  {METRIC} {trial.value:.4f}  {self.epoch_text(trial)}  {took}  {values}")
            best = self.best(trials)
            if best is not None and best.number == trial.number:
                line.append("  best so far", style="bold green")
        elif trial.state == TrialState.PRUNED:
            line.append(f"pruned at epoch {len(trial.intermediate_values)}", style="yellow")
            score = trial_score(trial)
            score_text = f"{score:.4f}" if score is not None else "-"
            line.append(f"  {METRIC} {score_text}  {took}  {values}")
        else:
            line.append(f"failed: {trial_error(trial)}", style="red")
            line.append(f"  {took}  {values}")
        return line

    def study_line(self, counts: TrialCounts, trials: list[FrozenTrial], now) -> Text:
        line = Text(f"study {self.name}: {self.done_text(counts, trials)}, {counts.failed} failed")
        line.append(f", {counts.running} running")
        best = self.best(trials)
        if best is not None:
            line.append(f" | best {METRIC} {best.value:.4f} (trial {best.number})", style="bold")
        line.append(f" | elapsed {format_duration(time.time() - self.start)}")
        eta = self.eta(counts, trials, now)
        if eta is not None:
            line.append(f" | ETA {format_duration(eta)}")
        return line

    def render(self, counts: TrialCounts, trials: list[FrozenTrial], now) -> Group:
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for column in ("trial", "values", "epoch", METRIC, "elapsed"):
            table.add_column(column, no_wrap=column != "values", overflow="fold")
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            value = latest_value(trial)
            table.add_row(
                str(trial.number),
                self.values(trial, short=True),
                self.epoch_text(trial),
                f"{value:.4f}" if value is not None else "-",
                format_duration(elapsed(trial, now)),
            )
        bar = ProgressBar(total=max(1, self.n_trials), completed=self._done(counts), width=24)
        footer = Table.grid(padding=(0, 1))
        footer.add_row(bar, self.study_line(counts, trials, now))
        return Group(table, footer) if table.row_count else Group(footer)

    # --- pieces -------------------------------------------------------------------------------

    def values(self, trial: FrozenTrial, short: bool = False) -> str:
        config = trial_config(trial, self.targets)
        if short:  # the live table is narrow: learning_rate=0.01, not optimizer.learning_rate=0.01
            return " ".join(f"{key.rsplit('.', 1)[-1]}={format_value(v)}" for key, v in config.items())
        return describe_config(config)

    def epoch_text(self, trial: FrozenTrial) -> str:
        if self.ladder is not None:
            return self.segment_text(trial)
        done = len(trial.intermediate_values)
        return f"epoch {done}/{self.epochs}" if self.epochs else f"epoch {done}"

    def segment_text(self, trial: FrozenTrial) -> str:
        """scheduler=asha: where a trial is on its configuration's curve, up to its rung's end:
        `rung 1 epoch 2/3` (a promotion reports the configuration's epochs, from where it resumed)."""
        rung = min(rung_of(trial), self.ladder.top)
        start, stop = self.ladder.segment(rung, first=not is_promotion(trial))
        reached = max(trial.intermediate_values, default=start)
        unit = "epoch" if self.ladder.unit == "epochs" else "step"
        return f"rung {rung} {unit} {reached}/{stop}"

    def done_text(self, counts: TrialCounts, trials: list[FrozenTrial]) -> str:
        """What is done. scheduler=asha trains a configuration in several trials (its first rung,
        then a promotion per rung it earned), so configurations and trials are counted apart."""
        done = f"{self._done(counts)}/{self.n_trials}"
        if self.ladder is None:
            return f"{done} done ({counts.complete} complete, {counts.pruned} pruned)"
        complete = [t for t in trials if t.state == TrialState.COMPLETE and was_needed(t)]
        promotions = sum(1 for trial in complete if is_promotion(trial))
        return (
            f"{done} configurations done ({len(complete)} trials: {len(complete) - promotions} "
            f"first rungs, {promotions} promotions)"
        )

    def _done(self, counts: TrialCounts) -> int:
        return counts.done if self.done is None else self.done

    @staticmethod
    def best(trials: list[FrozenTrial]) -> FrozenTrial | None:
        return best_trial(trials)  # with scheduler=asha: the best of the highest rung

    def eta(self, counts: TrialCounts, trials: list[FrozenTrial], now) -> float | None:
        """Seconds left: trials still to start at the mean duration of the finished ones, plus
        what the running ones have left of it, shared among the workers; at most until
        study.timeout's deadline plus what the running ones have left then."""
        durations = [elapsed(t, now) for t in trials if t.state in FINISHED and t.datetime_complete]
        durations = [d for d in durations if d is not None]
        if not durations:
            return None
        mean = statistics.fmean(durations)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        to_start = max(0, self.n_trials - self._done(counts) - len(running))
        running_left = [max(0.0, mean - (elapsed(t, now) or 0.0)) for t in running]
        left = (to_start * mean + sum(running_left)) / self.workers
        if self.deadline is not None:  # no trial starts after it; the running ones finish
            left = min(left, max(0.0, self.deadline - time.time()) + max(running_left, default=0.0))
        return left

    def _skip_earlier_sessions(self, trials: list[FrozenTrial]) -> None:
        started = datetime.datetime.fromtimestamp(self.start)
        earlier = [
            t
            for t in trials
            if t.state in FINISHED and t.datetime_complete is not None and t.datetime_complete < started
        ]
        self.announced.update(t.number for t in earlier)
        if earlier:
            done = sum(t.state != TrialState.FAIL for t in earlier)
            line = Text(f"study {self.name}: resumed with {done} trials done in earlier sessions")
            best = self.best(earlier)
            if best is not None:
                line.append(f" (best {METRIC} {best.value:.4f}, trial {best.number})")
            self._print(line)

    def _plain_running(self, trial: FrozenTrial, now) -> None:
        if MLFLOW_RUN_ATTR not in trial.user_attrs:
            return  # still sampling its values
        if trial.number not in self.started:
            self.started.add(trial.number)
            self._print(Text(f"trial {trial.number:>3} started  {self.values(trial)}"))
        done = len(trial.intermediate_values)
        if done and self.epoch_shown.get(trial.number) != done:
            self.epoch_shown[trial.number] = done
            took = format_duration(elapsed(trial, now))
            value = latest_value(trial)
            self._print(
                Text(f"trial {trial.number:>3} {self.epoch_text(trial)}  {METRIC} {value:.4f}  {took}")
            )

    def _live(self) -> Live:
        if self.live is None:
            self.live = Live(console=self.console, refresh_per_second=REFRESHES_PER_SECOND, transient=True)
            self.live.start()
            self._route_logging_through_live()
        return self.live

    def _route_logging_through_live(self) -> None:
        """Log records (a worker replaced, say) print above the live lines instead of through
        them: console handlers write to rich's stand-ins for stdout and stderr while it runs."""
        self.rerouted = []
        streams = {id(sys.__stdout__): "stdout", id(sys.__stderr__): "stderr"}
        for handler in logging.getLogger().handlers:
            name = streams.get(id(getattr(handler, "stream", None)))
            if isinstance(handler, logging.StreamHandler) and name:
                self.rerouted.append((handler, handler.setStream(getattr(sys, name))))

    def _restore_logging(self) -> None:
        for handler, stream in getattr(self, "rerouted", []):
            handler.setStream(stream)
        self.rerouted = []

    def _print(self, line: Text) -> None:
        # soft_wrap: a long line stays one line in a log file, whatever width rich assumes
        self.console.print(line, soft_wrap=True)
