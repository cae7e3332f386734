"""study: Hydra-configured, MLflow-tracked Keras training runs and Optuna studies."""

import os

# TensorFlow's C++ start-up chatter drowns the one line a user needs; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
