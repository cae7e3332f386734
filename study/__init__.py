"""study: Hydra-configured, MLflow-tracked Keras training runs and Optuna studies."""

import os

from study.core.native_logs import quiet_backend_startup

# TensorFlow's C++ start-up chatter ("Could not find cuda drivers", "failed call to cuInit" on
# a CPU machine, "NodeDef mentions attribute ...") drowns the lines a user needs. Level 3 keeps
# native FATAL messages only; Python warnings (Keras, TensorFlow's Python side, ours) still show.
# TF_CPP_MIN_LOG_LEVEL=0 on the command line brings everything back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
quiet_backend_startup()

__version__ = "0.2.0"
