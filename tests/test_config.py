import dataclasses

import pytest

from fireablate.config import RECIPES, TrainConfig, run_id

from .helpers import TINY

BASE = TrainConfig(data="synthetic", seed=3)


@pytest.mark.parametrize("changes", [
    {"device": "cuda:1"}, {"device": "cpu"}, {"precision": "bf16"}, {"compile": True}, {"data_dir": "/elsewhere"},
    {"deterministic": True},
])
def test_where_and_how_fast_a_run_runs_is_not_part_of_its_id(changes):
    """Protects run_id's promise (README: 'a grid can be finished on another machine'): the device,
    precision, compilation, data folder and deterministic kernels change how a run executes, not
    which experiment it is. Were any of them hashed, a sweep resumed on a GPU node would train every
    run again and the ledger would hold each run twice."""
    assert run_id(TINY, dataclasses.replace(BASE, **changes), "data") == run_id(TINY, BASE, "data")


@pytest.mark.parametrize("changes", [
    {"seed": 4}, {"lr": 0.5}, {"recipe": "fast"}, {"limit_train": 100}, {"batch_size": 64}, {"epochs": 3},
    {"augment": "flipcrop"}, {"weight_decay": 1e-4}, {"data": "cifar10"},
])
def test_what_defines_the_experiment_changes_the_run_id(changes):
    """The other side of the same rule: two different experiments never share an id (and a row)."""
    assert run_id(TINY, dataclasses.replace(BASE, **changes), "data") != run_id(TINY, BASE, "data")


@pytest.mark.parametrize("setting", [{"label_smoothing": 0.3}, {"tta_flip": False}, {"tta_moves": 2},
                                     {"crop_pad": 3}])
def test_a_recipe_setting_that_changes_the_result_changes_the_run_id(setting, monkeypatch):
    """A run id names what was trained and how it was judged: were the recipe's label smoothing,
    crop padding or test-time views left out, a `fast` run finished under an older recipe would be taken for
    today's (skipped by a resumed sweep, pooled as its seed). Settings a recipe does not use stay
    out of the id, so the ids of study runs did not change when these settings were added."""
    config = dataclasses.replace(BASE, recipe="fast")
    before = run_id(TINY, config, "data")
    monkeypatch.setitem(RECIPES, "fast", dataclasses.replace(RECIPES["fast"], **setting))
    assert run_id(TINY, config, "data") != before
    assert not {"label_smoothing", "tta_flip", "tta_moves", "crop_pad"} & set(BASE.identity())


def test_the_data_and_the_network_are_part_of_the_run_id():
    assert run_id(TINY, BASE, "other data") != run_id(TINY, BASE, "data")
    assert run_id(dataclasses.replace(TINY, num_classes=7), BASE, "data") != run_id(TINY, BASE, "data")


@pytest.mark.parametrize("recipe", ["study", "fast"])
def test_augment_none_turns_augmentation_off(recipe):
    """README: --augment none is a choice; a recipe with augmentation must then train without it."""
    config = TrainConfig(recipe=recipe, augment="none")
    assert config.resolved_recipe.augment == "none"
    assert config.identity()["augment"] == "none"
