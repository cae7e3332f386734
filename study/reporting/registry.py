"""The study's winner in the Model Registry: one version per winner however many drivers
register it together, its tags and description (what it takes and returns), and the `champion`
alias that names the study's current winner: models:/NAME@champion. Each write is idempotent:
a driver killed part way leaves the rest to the next one that finishes the study."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mlflow import MlflowClient
from optuna.trial import FrozenTrial

from study.core.names import CHAMPION_ALIAS, CHECKPOINT_TAG, METRIC
from study.tracking.lineage import register_logged_model
from study.tracking.serving import CLASS_COLUMN, PROBABILITIES_COLUMN, expected_input

log = logging.getLogger(__name__)


def register_once(
    client: MlflowClient,
    registered_model: str,
    run_id: str,
    model_id: str,
    version_tags: Mapping[str, str],
    logged_here: bool,
) -> str:
    """Register the logged model; if another driver's version of the same run and checkpoint
    came first, drop this one (and the model, when this driver logged it: no version names it)."""
    uri = f"models:/{model_id}"
    version = int(register_logged_model(client.tracking_uri, uri, registered_model, version_tags).version)
    first = first_version_of(client, registered_model, run_id, version_tags[CHECKPOINT_TAG])
    if first < version:  # another driver of this study registered this winner a moment ago
        client.delete_model_version(registered_model, str(version))
        if logged_here:
            client.delete_logged_model(model_id)
        log.info("the winner is version %d of %s, registered by another driver", first, registered_model)
    return f"models:/{registered_model}/{first}"


def first_version_of(
    client: MlflowClient, registered_model: str, run_id: str, checkpoint_sha256: str
) -> int | None:
    """Drivers that share a study see it done at the same moment and each evaluate and
    register its winner. The registry keeps the first version made from the winner's run and
    checkpoint; a driver whose version came later deletes its own, so every driver ends up
    naming the same one, whatever the order of their writes. None: no version yet."""
    same_model = f"run_id = '{run_id}' and tags.{CHECKPOINT_TAG} = '{checkpoint_sha256}'"
    versions = client.search_model_versions(f"name = '{registered_model}' and {same_model}")
    return min((int(version.version) for version in versions), default=None)


def version_tags(best: FrozenTrial, test_accuracy: float, study: str) -> dict[str, str]:
    """What the registered version is: which study and trial, and how well it did."""
    return {
        "study": study,
        "trial": str(best.number),
        METRIC: f"{best.value:.4f}",
        "test_accuracy": f"{test_accuracy:.4f}",
    }


def version_description(best: FrozenTrial, test_accuracy: float, study: str, facts: Mapping) -> str:
    return (
        f"Winner of study {study}: trial {best.number}, {METRIC} {best.value:.4f}, "
        f"test_accuracy {test_accuracy:.4f}. Input: raw {expected_input(facts)}; output: per "
        f"image its `{CLASS_COLUMN}` and `{PROBABILITIES_COLUMN}` (one per class, summing to 1)."
    )


def name_champion(client: MlflowClient, model_uri: str) -> None:
    """Point the `champion` alias at the winner's version, so that models:/NAME@champion serves
    the study's current winner. Drivers that finish the study together set the same version."""
    name, version = model_uri.removeprefix("models:/").rsplit("/", 1)
    if str(client.get_registered_model(name).aliases.get(CHAMPION_ALIAS)) != version:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)


def describe_version(client: MlflowClient, model_uri: str, tags: Mapping[str, str], description: str) -> None:
    """Give the registered version its tags and description, writing only what it lacks: a
    version is made with its tags, and a driver killed before it wrote the description
    leaves it to the next one that finishes the study. Each write is idempotent."""
    name, version = model_uri.removeprefix("models:/").rsplit("/", 1)
    current = client.get_model_version(name, version)
    for key, value in tags.items():
        if current.tags.get(key) != value:
            client.set_model_version_tag(name, version, key, value)
    if current.description != description:
        client.update_model_version(name, version, description=description)
