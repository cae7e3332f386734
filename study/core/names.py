"""Every name the package stores and reads back: Optuna attributes, MLflow tags, leaderboard
columns and default store locations.

One home for each spelling, so the driver, the workers, the leaderboard, `study.report` and
`study.reproduce` never disagree; `tests/core/test_names.py` checks that no other module
spells one of these strings itself.
"""

# Where the commands look when not told: the stores `conf/` writes by default.
DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"

# Optuna study user attributes.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
# {config key: value} of what the scores depend on (epochs, steps, batch size, the data's
# digest), set when the study is created: a resume that changes one is refused.
TRAINING_BUDGET_ATTR = "training_budget"

# Optuna trial user attributes.
MLFLOW_RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run
FAIL_REASON_ATTR = "fail_reason"  # one line: why the trial failed
NOT_NEEDED_ATTR = "not_needed"  # a trial that lost the race for the last places of the study
WORKER_ATTR = "worker"  # host:pid of the worker process that runs the trial
BASELINE_ATTR = "baseline"  # the enqueued trial of the base config's values
RETRY_OF_ATTR = "retry_of"
CONFIG_ATTR = "config"  # scheduler=asha, a promotion: the number of its configuration's first trial
RUNG_ATTR = "rung"  # scheduler=asha: the rung a trial trains up to
# Optuna trial system attributes (Optuna's own retry callback writes and reads this one).
RETRY_FAILED_TRIAL_ATTR = "failed_trial"  # a retry: the number of the trial it repeats
# Attributes of one attempt at a trial: a retry starts without them.
ATTEMPT_ATTRS = (MLFLOW_RUN_ATTR, FAIL_REASON_ATTR, NOT_NEEDED_ATTR, WORKER_ATTR)

# MLflow run tags of a trial and of a study.
STATE_TAG = "optuna.trial.state"  # COMPLETE, PRUNED or FAIL, set before the run ends
TRIAL_NUMBER_TAG = "optuna.trial.number"
RETRY_OF_TAG = "optuna.trial.retry_of"
OPTUNA_STUDY_TAG = "optuna.study_name"
STUDY_NAME_TAG = "study.name"
STUDY_ROLE_TAG = "study.role"  # PARENT_ROLE on the study's parent run
PARENT_ROLE = "parent"
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
# On the winner's logged model: host:pid of the driver that logs it. A rerun deletes a model
# left PENDING once that driver is gone.
LOGGED_BY_TAG = "study.logged_by"
BEST_RUN_TAG = "best_trial_run_id"  # on the parent
BEST_MODEL_TAG = "best_trial_model_uri"  # on the parent
BEST_TEST_METRIC = "best_trial_test_accuracy"  # on the parent: the winner's test accuracy
# The Model Registry alias of a study's registered model that names its current winner:
# models:/NAME@champion.
CHAMPION_ALIAS = "champion"
# In what a finished study returns and its summary prints: how to serve the winner.
SERVING_URI_KEY = "serving_model_uri"  # models:/NAME@champion, or the logged model when not registered
SERVING_INPUT_KEY = "serving_input_file"  # a request of raw test images for the served model
EXPERIMENT_ID_KEY = "experiment_id"  # the study's MLflow experiment, for the UI's address

# The MLflow experiment's kind: model training, not GenAI (see study.tracking.runs for the UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"

# MLflow run tags that say what ran where (every run).
BACKEND_TAG = "keras.backend"
DEVICE_TAG = "device"
DEVICE_KIND_TAG = "device.kind"  # CPU, GPU or TPU: a replay on another kind is refused
DEVICE_HOST_TAG = "device.host"  # the machine (a Slurm task's node)
DEVICE_GPUS_TAG = "device.gpus"  # the GPU indices the process was given (CUDA_VISIBLE_DEVICES)
# What else decides a CPU run's numbers: `study.reproduce` restores them for the replay.
CORES_TAG = "threads.cores"  # the CPU cores the process could run on (JAX sizes its pool by them)
INTRA_OP_THREADS_TAG = "threads.intra_op"  # TensorFlow's (TF_NUM_INTRAOP_THREADS, else the cores)
INTER_OP_THREADS_TAG = "threads.inter_op"  # TensorFlow's (TF_NUM_INTEROP_THREADS, else the cores)
XLA_FLAGS_TAG = "threads.xla_flags"  # XLA_FLAGS, when set (a worker's turn off multi-threaded Eigen)
DATA_NAME_TAG = "data.name"
DATA_SOURCE_TAG = "data.source"
# scikit-learn's digits: their data.source, and the factor that stretches their 0..16 pixels to
# the 0..255 of the other data sets (training) and back (the served model takes them raw)
DIGITS_SOURCE = "sklearn.datasets.load_digits"
DIGITS_PIXEL_FACTOR = 16
DATA_DIGEST_TAG = "data.digest"
DATA_EXAMPLES_TAG = "data.train_examples"
DATA_CLASSES_TAG = "data.num_classes"
MODEL_SOURCE_TAG = "model.source_digest"  # the user's model (model.builder): sha256 of its module
VERSION_TAG_PREFIX = "versions."  # versions.keras, versions.tensorflow, ...

# Replays and reproductions.
REPLAY_OF_TAG = "replay_of"  # on a replay's run: the id of the run whose config.yaml it replays
REPRODUCTION_OF_TAG = "reproduction_of"  # on study.reproduce's run: the run it reproduces
REPRODUCED_BY_TAG = "reproduced_by"  # on the original: the latest reproduction
REPRODUCTION_DIFF_TAG = "reproduction.max_abs_diff"
SEED_VARIANCE_OF_TAG = "seed_variance_of"  # on each run of `study.reproduce --seeds N`
SEED_VARIANCE_SEED_TAG = "seed_variance.seed"
SEED_VARIANCE_PREFIX = "seed_variance."  # metrics on the original: seed_variance.<metric>.mean, ...

# A study's confirmation (study.confirm_top, study.confirm_seeds): its best configurations
# trained again with other seeds, each in a run nested under the parent and tagged with these.
CONFIRMATION_OF_TAG = "confirmation_of"  # the configuration's run
CONFIRMATION_TRIAL_TAG = "confirmation.trial"  # the configuration's trial (with asha: at its rung)
CONFIRMATION_SEED_TAG = "confirmation.seed"
CONFIRMATION_DRIVER_TAG = "confirmation.driver"  # host:pid of the driver that trains it
# Optuna study user attributes: one per confirmed trial, confirmation.trial_0003 -> the three
# trial attributes below. Optuna keeps a finished trial as it is, so the study holds them, and
# `search.confirmation` shows them on the trial (the ranking reads them there).
CONFIRMATION_ATTR_PREFIX = "confirmation.trial_"
CONFIRM_MEAN_ATTR = "confirm_mean"  # val_accuracy over the trial's seed and the confirmation's
CONFIRM_STD_ATTR = "confirm_std"
CONFIRM_SEEDS_ATTR = "confirm_seeds"  # how many seeds: the trial's own plus study.confirm_seeds
# Metrics: on a confirmed configuration's run and, for the winner, on the parent; the parent
# also gets each confirmed trial's, CONFIRM_TRIAL_METRIC.format(number=3, stat="mean").
CONFIRM_MEAN_METRIC = "confirm.val_accuracy.mean"
CONFIRM_STD_METRIC = "confirm.val_accuracy.std"
CONFIRM_SEEDS_METRIC = "confirm.n_seeds"
CONFIRM_TRIAL_METRIC = "confirm.trial_{number:04d}.val_accuracy.{stat}"

# Leaderboard columns, shared by every table (leaderboard.csv, study.report, the summary).
STUDY_COLUMN = "study"
TRIAL_COLUMN = "trial"
RUN_NAME_COLUMN = "run_name"
STATE_COLUMN = "state"
RUNG_COLUMN = "rung"  # scheduler=asha: the rung a trial trained up to; the highest ranks first
METRIC = "val_accuracy"  # what a study maximizes: the best validation accuracy of a run
TEST_METRIC = "test_accuracy"
EPOCHS_COLUMN = "epochs"
CONFIRM_MEAN_COLUMN = "val_accuracy_mean"  # study.confirm_top: over the configuration's seeds
CONFIRM_STD_COLUMN = "val_accuracy_std"
DURATION_COLUMN = "duration_s"
ROLE_COLUMN = "role"
ERROR_COLUMN = "error"
RUN_ID_COLUMN = "run_id"
