"""The peer in bench/search.py's race: Keras Tuner's Hyperband on the same space, data and budget.

    python bench/keras_tuner_search.py --log curves.jsonl --directory kt --seed 0 \
        --epochs 9 data.path=../shared/data/mnist

What a Keras user would otherwise write: a hypermodel choosing softmax or the Deep-MNIST CNN,
SGD / Adam / RMSProp, a log learning rate in 1e-4..1 and (CNN only) a dropout rate in 0..0.7;
`keras_tuner.Hyperband(objective="val_accuracy", max_epochs=EPOCHS, factor=3, seed=SEED)` and
`tuner.search(x_train, y_train, validation_data=..., batch_size=100)`. The models, optimizers
and data split are this project's (`study.training`), built from the config the same
overrides give `python -m study.train`, so both sides train the same networks on the same
images. Every epoch's validation accuracy goes to --log as one JSON line with its wall time;
bench/search.py stops the process at the budget, as it stops a study.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import keras
import keras_tuner
from omegaconf import DictConfig, OmegaConf

from study.training.data import load_dataset
from study.training.models import build_model
from study.training.optimizers import build_optimizer

from common import train_config

MODELS = ("softmax", "cnn")
OPTIMIZERS = ("sgd", "adam", "rmsprop")


def parse_arguments() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, required=True, help="JSON lines: one per epoch")
    parser.add_argument("--directory", type=Path, required=True, help="Keras Tuner's trial folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=9, help="Hyperband's max_epochs")
    parser.add_argument("--batch-size", type=int, default=100)
    return parser.parse_known_args()


class SearchSpace(keras_tuner.HyperModel):
    """bench/search.py's space as a Keras Tuner hypermodel."""

    def __init__(self, configs: dict[tuple[str, str], DictConfig], image_shape: tuple, num_classes: int):
        super().__init__()
        self.configs, self.image_shape, self.num_classes = configs, image_shape, num_classes

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        model_name = hp.Choice("model", list(MODELS))
        optimizer_name = hp.Choice("optimizer", list(OPTIMIZERS))
        learning_rate = hp.Float("learning_rate", 1e-4, 1.0, sampling="log")
        cfg = copy.deepcopy(self.configs[model_name, optimizer_name])
        OmegaConf.set_readonly(cfg, False)
        if model_name == "cnn":
            with hp.conditional_scope("model", ["cnn"]):
                cfg.model.dropout_rate = hp.Float("dropout_rate", 0.0, 0.7)
        cfg.optimizer.learning_rate = learning_rate
        model = build_model(cfg.model, self.image_shape, self.num_classes)
        model.compile(
            optimizer=build_optimizer(cfg.optimizer),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model


class EpochLog(keras.callbacks.Callback):
    """One JSON line per epoch, written at once: the bench reads it after a hard stop. (Keras
    Tuner deep-copies callbacks for every trial: no open file is kept.)"""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        record = {"time": time.time(), "epoch": epoch, "val_accuracy": float((logs or {})["val_accuracy"])}
        with open(self.path, "a") as log:
            log.write(json.dumps(record) + "\n")


def main() -> None:
    args, overrides = parse_arguments()
    keras.utils.set_random_seed(args.seed)
    configs = {
        (model, optimizer): train_config([*overrides, f"model={model}", f"optimizer={optimizer}"])
        for model in MODELS
        for optimizer in OPTIMIZERS
    }
    any_config = next(iter(configs.values()))
    dataset = load_dataset(any_config.data, args.seed)  # split as the study's trials split it
    print(f"data: {OmegaConf.to_yaml(any_config.data).strip()}", flush=True)
    tuner = keras_tuner.Hyperband(
        SearchSpace(configs, dataset.image_shape, dataset.num_classes),
        objective="val_accuracy",
        max_epochs=args.epochs,
        factor=3,
        seed=args.seed,
        directory=str(args.directory),
        project_name="bench",
        overwrite=True,
    )
    tuner.search(
        dataset.x_train,
        dataset.y_train,
        validation_data=(dataset.x_val, dataset.y_val),
        batch_size=args.batch_size,
        callbacks=[EpochLog(args.log)],
        verbose=2,
    )


if __name__ == "__main__":
    main()
