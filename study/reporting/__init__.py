"""The reporting layer: what a person reads. The leaderboard (`leaderboard`, and `tables` for
`study.report`), the live display while a study runs (`live`) and the summary it ends with
(`summary`). What a finished study writes once, plots and the winner (`finish`, `plots`,
`winner`), is imported by module: it loads matplotlib and, for the winner, the backend."""

from study.reporting.leaderboard import leaderboard, space_targets, trials_table
from study.reporting.live import StudyProgress
from study.reporting.summary import final_summary

__all__ = ["StudyProgress", "final_summary", "leaderboard", "space_targets", "trials_table"]
