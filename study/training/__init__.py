"""The training layer: data (`data`), models and optimizers (`models`, `optimizers`), the
backend-dependent parts (`backend`), Keras callbacks (`callbacks`), the fit itself (`fit`,
`resume`) and one tracked run from config to MLflow (`run`); `replay` replays a logged run.

Keras and the backend are imported inside the functions that build or train a model: a bad
config is reported before any of them starts.
"""

from study.training.data import Dataset, load_dataset
from study.training.fit import EpochCallback, Segment
from study.training.run import train

__all__ = ["Dataset", "EpochCallback", "Segment", "load_dataset", "train"]
