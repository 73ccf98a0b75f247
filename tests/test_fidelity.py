"""The study's protocol as its Keras code had it: each row of docs/fidelity.md's table of
differences, checked where it lands (the modules, the optimizer, the schedule, the presets)."""

import dataclasses

import pytest
import torch
from torch import nn

from fireablate.config import RECIPES, TrainConfig
from fireablate.model import Fire, build
from fireablate.params import count
from fireablate.presets import PRESETS, resolve
from fireablate.spec import Dropout, Pool
from fireablate.training import _optimizer, _Schedule

# The study's networks; cifar_tiny is ours (the quickstart's) and takes torch's momentum on purpose.
CIFAR_PRESETS = [n for n in PRESETS if (n.startswith("cifar") or n == "alexnet_cifar") and n != "cifar_tiny"]


@pytest.mark.parametrize("name", CIFAR_PRESETS)
def test_keras_batch_norm_reaches_every_module(name):
    norms = [m for m in build(PRESETS[name]).modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert norms and all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)  # Keras: momentum 0.99, eps 1e-3


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_imagenet_presets_stay_torchvisions(name):
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build(PRESETS[name]).modules())


def test_batch_norm_sits_after_the_activation_in_the_study_presets():
    model = build(PRESETS["cifar"]).eval()
    assert [isinstance(m, t) for m, t in zip(model.features[:3], (nn.Conv2d, nn.ReLU, nn.BatchNorm2d))] == [True] * 3
    seen = []
    for m in model.modules():
        if isinstance(m, Fire):
            m.squeeze_bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].min().item()))
    model(torch.randn(2, 3, 32, 32))
    assert seen and min(seen) >= 0  # batch norm gets ReLU's output
    torchvision_order = build(dataclasses.replace(PRESETS["cifar"], bn_order="conv-bn-relu"))
    assert [isinstance(m, t) for m, t in zip(torchvision_order.features[:3], (nn.Conv2d, nn.BatchNorm2d, nn.ReLU))] == [True] * 3


def test_the_study_recipes_use_keras_adam_epsilon_and_batch_32():
    model = build(resolve("cifar", {"n_fire": 2, "base_e": 16, "incr_e": 16, "stem_filters": 8, "pool_after": ""}))
    for recipe in ("study", "step"):
        assert _optimizer(model, RECIPES[recipe], torch.device("cpu")).defaults["eps"] == 1e-7
        assert TrainConfig(recipe=recipe).resolved_recipe.batch_size == 32
    assert TrainConfig(recipe="study", batch_size=64).resolved_recipe.batch_size == 64
    assert TrainConfig(recipe="fast").resolved_recipe.batch_size == 128
    assert TrainConfig(recipe="study", batch_size=64).resolved_recipe.lr == 1e-3  # Adam: no scaling


def test_the_fast_recipe_scales_lr_linearly_with_the_batch():
    assert TrainConfig(recipe="fast", batch_size=512).resolved_recipe.lr == pytest.approx(0.4)
    assert TrainConfig(recipe="fast", batch_size=512, lr=0.2).resolved_recipe.lr == 0.2  # --lr wins


def test_plateau_needs_keras_min_delta_of_val_accuracy():
    schedule = _Schedule(RECIPES["study"], 10)
    schedule.end_epoch(0.5, 1.0)
    for k in range(1, 4):  # better, but by less than 1e-4 each time: not an improvement for Keras
        schedule.end_epoch(0.5 + k * 3e-5, 1.0 - k * 0.01)
    assert schedule.state["lr"] == 5e-4


def test_step_boundaries_count_epochs_as_keras_does():
    step = _Schedule(RECIPES["step"], 10)
    # epoch indices from 0, as LearningRateScheduler passes them: "from epoch 51" is index 50
    assert [step.lr_at_step(e, 0) for e in (49, 50, 69, 70, 84, 85)] == [1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6]


def test_early_pool_adds_a_pool_before_the_first_fire_module_and_keeps_the_others():
    pools = {name: [layer for layer in PRESETS[name].layers() if isinstance(layer, Pool)] for name in ("cifar", "cifar_early_pool")}
    assert len(pools["cifar_early_pool"]) == len(pools["cifar"]) + 1
    assert pools["cifar_early_pool"][0].name == "pool1"  # right after conv1, before fire2
    assert count(PRESETS["cifar_early_pool"]).params == count(PRESETS["cifar"]).params


@pytest.mark.parametrize("name", ["cifar_simple_bypass", "cifar_complex_bypass"])
def test_bypass_presets_have_dropout_after_every_max_pool(name):
    features = PRESETS[name].layers().features
    after_pools = [features[i + 1] for i, layer in enumerate(features) if isinstance(layer, Pool)]
    assert after_pools and all(isinstance(layer, Dropout) for layer in after_pools)
    plain = PRESETS["cifar"].layers().features
    assert not any(isinstance(layer, Dropout) for layer in plain)


def test_sizes_in_the_study_units():
    mb = lambda name: count(PRESETS[name]).params * 4 / 1e6  # noqa: E731  (the study's MB: 10^6 bytes)
    assert round(mb("alexnet_cifar"), 1) == 35.9  # the study's adapted AlexNet
    assert round(mb("cifar_complex_bypass") - count(resolve("cifar", {"freq": 2})).params * 4 / 1e6, 2) == 0.58


def test_squeezenet_papers_figure_2_size_axis():
    mib = lambda **o: count(resolve("squeezenet1_0", o)).mib()  # noqa: E731
    assert round(mib(), 1) == 4.8  # SR 0.125: SqueezeNet v1.0
    assert round(mib(sr=0.75)) in (18, 19)  # 18.47 MiB, 19.37 MB: the figure's "19 MB"
    assert round(mib(sr=0.5, pct3x3=0.5)) == 13


def _two_runs(tmp_path):
    """A study-recipe run and a fast-recipe run whose best and final epochs differ."""
    from fireablate import ledger as L
    from fireablate.params import count as count_of

    path = tmp_path / "ledger.csv"
    for recipe, rid in (("study", "a" * 12), ("fast", "b" * 12)):
        spec = PRESETS["cifar"]
        row = L.make_row(run_id=rid, status="done", spec=spec, config=TrainConfig(recipe=recipe, data="synthetic"),
                         counts=count_of(spec), data_source="synthetic", data_identity="d")
        row.update(best_val_acc=0.9, final_val_acc=0.8, epochs=10, best_epoch=7, n_train=100)
        L.append(path, row)
    return path


def test_the_metric_switch_changes_the_numbers_and_says_which(tmp_path):
    from typer.testing import CliRunner

    from fireablate import ledger as L
    from fireablate.cli import app
    from fireablate.results import report_table, with_metric

    path = _two_runs(tmp_path)
    df = L.read(path).frame()
    auto, phrase = with_metric(df, "auto")
    assert auto.set_index("recipe")["acc"].to_dict() == {"study": 0.8, "fast": 0.9}  # study: the last epoch
    assert "final epoch for recipes that stop early" in phrase
    assert sorted(report_table(with_metric(df, "best")[0])["acc mean (fraction)"]) == [0.9, 0.9]
    assert sorted(report_table(with_metric(df, "final")[0])["acc mean (fraction)"]) == [0.8, 0.8]
    shown = CliRunner().invoke(app, ["report", "--ledger", str(path), "--metric", "final"])
    assert shown.exit_code == 0 and "accuracy: the final epoch" in shown.stdout
    plotted = CliRunner().invoke(app, ["plot", "--kind", "pareto", "--ledger", str(path), "--metric", "best",
                                       "--out-dir", str(tmp_path / "f")])
    assert plotted.exit_code == 0, plotted.output
    assert "accuracy: the best epoch" in plotted.stdout
    points = (tmp_path / "f" / "pareto.csv").read_text()
    assert "0.9" in points and "0.8" not in points
