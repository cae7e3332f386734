"""Names shared by the study store (Optuna), the tracking store (MLflow) and the report.

One place for every attribute and tag a study writes and another module reads, so the driver,
the workers, the leaderboard and `study.report` never disagree on a spelling.
"""

# Optuna study user attributes.
PARENT_RUN_ATTR = "mlflow_parent_run_id"

# Optuna trial user attributes.
MLFLOW_RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run
FAIL_REASON_ATTR = "fail_reason"  # one line: why the trial failed
NOT_NEEDED_ATTR = "not_needed"  # a trial that lost the race for the last places of the study
WORKER_ATTR = "worker"  # host:pid of the worker process that runs the trial
BASELINE_ATTR = "baseline"  # the enqueued trial of the base config's values
RETRY_OF_ATTR = "retry_of"
# Attributes of one attempt at a trial: a retry starts without them.
ATTEMPT_ATTRS = (MLFLOW_RUN_ATTR, FAIL_REASON_ATTR, NOT_NEEDED_ATTR, WORKER_ATTR)

# MLflow run tags.
STATE_TAG = "optuna.trial.state"  # COMPLETE, PRUNED or FAIL, set before the run ends
TRIAL_NUMBER_TAG = "optuna.trial.number"
RETRY_OF_TAG = "optuna.trial.retry_of"
OPTUNA_STUDY_TAG = "optuna.study_name"
STUDY_NAME_TAG = "study.name"
STUDY_ROLE_TAG = "study.role"  # "parent" on the study's parent run
ERROR_TAG = "error"  # one short line; the whole traceback is the run's error.txt artifact
NOTE_TAG = "mlflow.note.content"  # the run description the MLflow UI shows
RUNG_TAG = "study.rung"  # scheduler=asha: the highest rung the configuration's run completed
CONFIG_TAG = "study.config"  # scheduler=asha: the number of the configuration's first trial
# The winner: on its run, and on the study's parent run.
WINNER_TAG = "study.winner"  # "true" on the one run that won the study
MODEL_URI_TAG = "mlflow_model_uri"  # on the winner's run: where its MLflow model is
# On the winner's run and its registered version: which best.keras the model is. A promotion
# (scheduler=asha) in a resumed study can improve the winner's checkpoint after it was logged.
CHECKPOINT_TAG = "checkpoint_sha256"
BEST_RUN_TAG = "best_trial_run_id"  # on the parent
BEST_MODEL_TAG = "best_trial_model_uri"  # on the parent
