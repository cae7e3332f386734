"""The reference: a bare `keras.Model.fit`, with none of the product's tracking around it.

Same data, model, optimizer, batch size, epochs and seed as `python -m study.train OVERRIDES`,
fed the same batches (`study.train.run_inputs`), and no MLflow, TensorBoard or checkpoints:

    python bench/bare_fit.py model=cnn trainer.epochs=1 data.path=../shared/data/mnist
    python bench/bare_fit.py --repeat 5 data=digits model=softmax   # 5 fits in one process

Timed: seeding, model build, compile and fit (with the validation pass each epoch, as
study.train does). Not timed: imports and reading the data. Prints one result line (JSON).
"""

from __future__ import annotations

import time

import keras

from study.training import backend
from study.training.data import load_dataset
from study.training.fit import run_inputs
from study.training.run import compile_model

from common import main_overrides, print_result, train_config


def bare_fit(cfg, dataset) -> dict:
    trainer = cfg.trainer
    start = time.perf_counter()
    # The seeding study.train does (TensorFlow's deterministic kernels too), so both runs train
    # the same numbers and their validation accuracies can be compared exactly.
    backend.seed_everything(trainer.seed)
    model = compile_model(cfg, dataset)  # the model, optimizer and metric study.train compiles
    # Fed as study.train feeds a run (the data order, and dropout's stream per epoch), so the
    # numbers compare exactly; without its pipeline Keras' own waits for an autotuning thread.
    inputs, reseed = run_inputs(model, dataset, trainer, trainer.epochs)
    history = model.fit(
        **inputs,
        callbacks=reseed,
        epochs=trainer.epochs,
        validation_data=(dataset.x_val, dataset.y_val),
        validation_batch_size=trainer.eval_batch_size,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "val_accuracy": float(history.history["val_accuracy"][-1])}


def main() -> None:
    repeats, overrides = main_overrides()
    cfg = train_config(overrides)
    if cfg.trainer.max_steps is not None:
        raise ValueError("trainer.max_steps: the bare fit trains whole epochs; set trainer.epochs instead")
    dataset = load_dataset(cfg.data, cfg.trainer.seed)
    runs = []
    for _ in range(repeats):
        keras.backend.clear_session()  # what a sweep worker does between trials
        runs.append(bare_fit(cfg, dataset))
    print_result(
        {
            "seconds": [run["seconds"] for run in runs],
            "val_accuracy": runs[-1]["val_accuracy"],
            "train_examples": len(dataset.x_train),
            "epochs": cfg.trainer.epochs,
            "device": backend.device_name(),
        }
    )


if __name__ == "__main__":
    main()
