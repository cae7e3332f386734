"""The training budget a study records when it is created, and the resume that changes it."""

from __future__ import annotations

import threading

import optuna
import pytest
from omegaconf import OmegaConf

from study.core.errors import ConfigError
from study.core.names import PARENT_RUN_ATTR, TRAINING_BUDGET_ATTR
from study.execution.parent import check_budget_unchanged, training_budget

DIGEST = "sha256:" + "a" * 64


def budget(digest: str = DIGEST, **trainer) -> dict:
    base = OmegaConf.create({"trainer": {"epochs": 1, "max_steps": None, "batch_size": 50, **trainer}})
    return training_budget(base, digest)


def created() -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    check_budget_unchanged(study, True, budget(), storage)
    return study, storage


def test_the_creator_records_the_budget_and_the_same_budget_resumes():
    study, storage = created()
    assert study.user_attrs[TRAINING_BUDGET_ATTR] == {
        "trainer.epochs": 1,
        "trainer.max_steps": None,
        "trainer.batch_size": 50,
        "data.digest": DIGEST,
    }
    check_budget_unchanged(optuna.load_study(study_name="s", storage=storage), False, budget(), storage)


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (budget(epochs=4), "trainer.epochs: changed since study s began (was 1, now 4)"),
        (budget(max_steps=100), "trainer.max_steps: changed since study s began (was None, now 100)"),
        (budget(batch_size=32), "trainer.batch_size: changed since study s began (was 50, now 32)"),
        (
            budget("sha256:" + "b" * 64),
            "data.digest: changed since study s began (was sha256:aaaaaaaaaaaa..., "
            "now sha256:bbbbbbbbbbbb...; data.*, trainer.seed and the data files decide it)",
        ),
    ],
)
def test_a_resume_that_changes_the_budget_is_one_line(changed, expected):
    study, storage = created()
    with pytest.raises(ConfigError) as refused:
        check_budget_unchanged(optuna.load_study(study_name="s", storage=storage), False, changed, storage)
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)
    assert study.user_attrs[TRAINING_BUDGET_ATTR] == budget()  # as it was


def test_a_study_made_before_budgets_were_recorded_records_the_first_resumes():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr(PARENT_RUN_ATTR, "run")  # it began long ago: nothing to wait for
    check_budget_unchanged(study, False, budget(epochs=3), storage)
    assert study.user_attrs[TRAINING_BUDGET_ATTR]["trainer.epochs"] == 3


def test_a_driver_started_beside_the_creator_waits_for_its_record():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    creator = threading.Timer(0.5, lambda: study.set_user_attr(TRAINING_BUDGET_ATTR, budget()))
    creator.start()
    with pytest.raises(ConfigError, match=r"trainer\.epochs: changed"):
        check_budget_unchanged(
            optuna.load_study(study_name="s", storage=storage), False, budget(epochs=2), storage
        )
    creator.join()
