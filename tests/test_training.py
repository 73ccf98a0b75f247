import dataclasses
import math
from pathlib import Path

import pytest
import torch

from fireablate.augment import eval_views
from fireablate import data as D
from fireablate.errors import UsageError
from fireablate.model import build, load_model, save_model
from fireablate.params import count
from fireablate.presets import resolve
from fireablate.config import RECIPES, TrainConfig, run_id
from fireablate.training import _Schedule, train

from .helpers import TINY, extract_real_subset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-20k.tar.gz"
CFG = TrainConfig(data="synthetic", limit_train=200, limit_test=100, batch_size=32, epochs=2, device="cpu")


@pytest.fixture(scope="module")
def synth():
    return D.limit(D.synthetic(n_train=400, n_test=200), 200, 100)


def _weights(path):
    return load_model(path)[0].state_dict()


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))


def _metrics(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_sec", "tflops")} for row in history]


def test_a_short_run_writes_everything(tmp_path, synth):
    events = []
    result = train(TINY, CFG, out_dir=tmp_path, data=synth, progress=lambda e, **i: events.append(e))
    assert result.status == "done" and result.epochs == 2 and len(result.history) == 2
    assert result.params == count(TINY).params and result.device == "cpu"
    for name in ("best.pt", "last.pt", "history.csv", "result.json", "checkpoint.pt", "run.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "history.csv").read_text().count("\n") == 3
    assert events[0] == "start" and events.count("epoch") == 2 and events.count("step") == 2 * 6  # 200 images in batches of 32: the last partial batch is dropped
    row = result.history[-1]
    assert row["images_per_sec"] > 0 and row["tflops"] == pytest.approx(row["images_per_sec"] * 6 * count(TINY).macs / 1e12)
    assert result.run_id == run_id(TINY, CFG, synth.identity)


def test_same_seed_same_results_and_another_seed_differs(tmp_path, synth):
    a = train(TINY, CFG, out_dir=tmp_path / "a", data=synth)
    b = train(TINY, CFG, out_dir=tmp_path / "b", data=synth)
    assert _metrics(a.history) == _metrics(b.history)
    assert _same_weights(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt"))
    c = train(TINY, dataclasses.replace(CFG, seed=1), out_dir=tmp_path / "c", data=synth)
    assert c.run_id != a.run_id and _metrics(c.history) != _metrics(a.history)


class _Killed(Exception):
    pass


def test_an_interrupted_run_resumes_to_identical_results(tmp_path, synth):
    cfg = dataclasses.replace(CFG, epochs=3)
    whole = train(TINY, cfg, out_dir=tmp_path / "whole", data=synth)

    def kill_in_epoch_2(event, **info):
        if event == "step" and info["epoch"] == 1 and info["step"] == 3:
            raise _Killed

    with pytest.raises(_Killed):
        train(TINY, cfg, out_dir=tmp_path / "cut", data=synth, progress=kill_in_epoch_2)
    starts = []
    resumed = train(TINY, cfg, out_dir=tmp_path / "cut", data=synth, resume=True,
                    progress=lambda e, **i: starts.append(i.get("start_epoch")) if e == "start" else None)
    assert starts == [1]
    assert _metrics(resumed.history) == _metrics(whole.history)
    assert _same_weights(_weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "cut" / "last.pt"))
    # a finished run is not trained again
    events = []
    again = train(TINY, cfg, out_dir=tmp_path / "cut", data=synth, progress=lambda e, **i: events.append(e))
    assert events == ["finished_before"] and again.best_val_acc == resumed.best_val_acc


def test_resume_needs_a_checkpoint_and_the_same_run(tmp_path, synth):
    with pytest.raises(UsageError, match="no checkpoint"):
        train(TINY, CFG, out_dir=tmp_path, data=synth, resume=True)
    train(TINY, dataclasses.replace(CFG, epochs=1), out_dir=tmp_path, data=synth)
    with pytest.raises(UsageError, match="holds a different run"):
        train(TINY, dataclasses.replace(CFG, seed=9), out_dir=tmp_path, data=synth)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_diverging_run_stops_with_status_diverged(tmp_path, synth, precision):
    """Whatever precision auto would pick on this CPU, an absurd lr ends as 'diverged'."""
    cfg = dataclasses.replace(CFG, recipe="fast", lr=1e6, precision=precision)
    result = train(TINY, cfg, out_dir=tmp_path, data=synth)
    assert result.status == "diverged"
    assert "loss became" in result.message and "epoch 1" in result.message


def test_init_starts_from_a_built_file(tmp_path, synth):
    model = build(TINY, seed=42)
    save_model(tmp_path / "init.pt", model)
    cfg = dataclasses.replace(CFG, epochs=1, init=str(tmp_path / "init.pt"))
    a = train(TINY, cfg, out_dir=tmp_path / "a", data=synth)
    b = train(TINY, dataclasses.replace(CFG, epochs=1), out_dir=tmp_path / "b", data=synth)
    assert a.run_id != b.run_id and _metrics(a.history) != _metrics(b.history)
    other = resolve("cifar", {"stem_filters": 8, "base_e": 16, "incr_e": 16, "n_fire": 3, "pool_after": "2,3"})
    with pytest.raises(UsageError, match="different network"):
        train(other, cfg, out_dir=tmp_path / "c", data=synth)


def test_schedules():
    plateau = _Schedule(RECIPES["study"], 10)
    stops = [plateau.end_epoch(acc, loss) for acc, loss in [(0.5, 1.0)] + [(0.4, 1.1)] * 5]
    assert plateau.state["lr"] == 5e-4  # halved once after 3 epochs without a better accuracy
    assert stops == [False] * 5 + [True]  # stopped after 5 epochs without a lower loss
    for _ in range(40):
        plateau.end_epoch(0.1, 2.0)
    assert plateau.state["lr"] == 1e-6
    step = _Schedule(RECIPES["step"], 10)
    assert [step.lr_at_step(e, 0) for e in (0, 49, 50, 69, 70, 85, 99)] == [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6, 1e-6]
    fast = _Schedule(dataclasses.replace(RECIPES["fast"], epochs=10), 10)
    lrs = [fast.lr_at_step(e, s) for e in range(10) for s in range(10)]
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 19 and lrs[-1] == 0.0
    assert all(a <= b for a, b in zip(lrs[:19], lrs[1:20])) and all(a >= b for a, b in zip(lrs[19:], lrs[20:]))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"recipe": "slow"}, "--recipe must be one of study, step, fast; got 'slow'"),
        ({"augment": "mixup"}, "--augment must be one of study, flipcrop, none; got 'mixup'"),
        ({"weight_decay": float("nan")}, "--weight-decay expects a finite number"),
        ({"seed": 2**64}, "--seed must be between 0 and 2\\*\\*63 - 1"),
        ({"precision": "fp8"}, "--precision must be"),
        ({"epochs": 0}, "--epochs must be at least 1"),
    ],
)
def test_bad_config(changes, message):
    with pytest.raises(UsageError, match=message):
        dataclasses.replace(CFG, **changes)


def test_data_must_fit_the_network(tmp_path, synth):
    with pytest.raises(UsageError, match="expects 3x64x64 inputs but the synthetic images are 3x32x32"):
        train(dataclasses.replace(TINY, input_size=64), CFG, out_dir=tmp_path, data=synth)
    with pytest.raises(UsageError, match="has 7 classes but the data has 10"):
        train(dataclasses.replace(TINY, num_classes=7), CFG, out_dir=tmp_path, data=synth)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_file(), reason=f"real images not found at {SHARED}")
def test_cifar_preset_learns_real_images(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREABLATE_CACHE", str(tmp_path / "cache"))
    extract_real_subset(SHARED, tmp_path, train_per_class=200, test_per_class=100)
    cfg = TrainConfig(data=str(tmp_path / "cifar10-jpeg"), recipe="fast", epochs=3, device="cpu")
    # The preset's Keras batch-norm momentum (0.01) needs hundreds of steps before its running
    # statistics fit the data; this run has 45, so it keeps torch's 0.1 and tests the rest.
    result = train(resolve("cifar", {"bn_momentum": 0.1}), cfg, out_dir=tmp_path / "run")
    assert result.n_train == 2000 and result.data_source.endswith("cifar10-jpeg")
    assert result.best_val_acc > 0.25, result.history  # chance is 10%
    assert math.isfinite(result.best_val_loss)


def test_early_stop_watches_val_loss_not_val_accuracy():
    """Protects _Schedule.end_epoch's stopping rule: the study's EarlyStopping monitored val loss
    (patience 5), while its lr schedule monitored val accuracy. Watching accuracy instead would stop
    runs whose loss still falls and let runs whose loss climbs go on."""
    rising_acc_rising_loss = _Schedule(RECIPES["study"], 10)
    stops = [rising_acc_rising_loss.end_epoch(0.1 + 0.05 * i, 1.0 + 0.1 * i) for i in range(6)]
    assert stops == [False] * 5 + [True]  # 5 epochs without a lower loss, however the accuracy climbs
    flat_acc_falling_loss = _Schedule(RECIPES["study"], 10)
    assert not any(flat_acc_falling_loss.end_epoch(0.5, 2.0 - 0.05 * i) for i in range(30))
    never = _Schedule(RECIPES["fast"], 10)  # a recipe without early stop never stops early
    assert not any(never.end_epoch(0.5, 1.0 + i) for i in range(30))


def _first_step_loss(tmp_path, synth, name: str) -> float:
    # One step per epoch (batch = the whole limited training set): the epoch's train loss is the
    # loss of the first batch under the initial weights, the same batch and augmentation each time.
    data = D.limit(synth, 50, 10)
    cfg = dataclasses.replace(CFG, recipe="fast", epochs=1, limit_train=50, limit_test=10, batch_size=50,
                              precision="fp32")
    return train(TINY, cfg, out_dir=tmp_path / name, data=data).history[0]["train_loss"]


def test_the_fast_recipe_trains_with_its_label_smoothing(tmp_path, synth, monkeypatch):
    """Protects the fast recipe's label smoothing (0.2, in its table) on its way into F.cross_entropy.

    The loss of one batch is linear in the smoothing: L(e) = CE + e * (mean_k(-log p_k) - CE). So
    two runs that differ from the recipe only in its smoothing (0 and 0.5; RECIPES is where
    recipes live, so the variants go there) tell which smoothing the shipped recipe's run used.
    A recipe without it, or a loss that drops it, reads as 0."""
    shipped = _first_step_loss(tmp_path, synth, "shipped")
    losses = {}
    expected = RECIPES["fast"].label_smoothing
    for smoothing in (0.0, 0.5):
        monkeypatch.setitem(RECIPES, "fast", dataclasses.replace(RECIPES["fast"], label_smoothing=smoothing))
        losses[smoothing] = _first_step_loss(tmp_path, synth, f"ls{smoothing}")
    assert abs(losses[0.5] - losses[0.0]) > 1e-3  # the batch tells smoothings apart
    used = 0.5 * (shipped - losses[0.0]) / (losses[0.5] - losses[0.0])
    assert used == pytest.approx(expected, abs=1e-3) and expected == 0.2


def _view_logits(model, data, mirror=False, moves=0):
    """Each test image's logits under each of its test-time views, stacked (views, N, classes)."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in data.channel_stats())
    x = (data.test_x.float() / 255 - mean) / std  # as every fireablate run normalizes
    with torch.no_grad():
        return torch.stack([model.eval()(v) for v in eval_views(x, mirror, moves)])


def test_the_fast_recipe_judges_a_network_by_its_mean_over_test_time_views(tmp_path, synth):
    """Protects the fast recipe's test-time views (README: flips +0.5 points, one-pixel moves on
    top): its validation loss and accuracy come from each test image's logits averaged over the
    image and its mirror, each also moved as the recipe says; not from the image alone."""
    cfg = dataclasses.replace(CFG, recipe="fast", precision="fp32")
    result = train(TINY, cfg, out_dir=tmp_path, data=synth)
    fast = RECIPES["fast"]
    assert fast.tta_flip
    views = _view_logits(load_model(tmp_path / "last.pt")[0], synth, True, fast.tta_moves)
    assert len(views) == 2 * (1 + fast.tta_moves)
    y, averaged, plain = synth.test_y, views.mean(0), views[0]
    flips_only = (views[0] + views[1 + fast.tta_moves]) / 2  # the image and its mirror, unmoved
    last = result.history[-1]
    ce = lambda logits: torch.nn.functional.cross_entropy(logits, y).item()  # noqa: E731
    # fp32 on one device: equal to rounding; a two-epoch network's views differ by less than 1e-4
    assert last["val_loss"] == pytest.approx(ce(averaged), rel=1e-6)
    assert last["val_loss"] != pytest.approx(ce(plain), rel=1e-6)
    assert last["val_loss"] != pytest.approx(ce(flips_only), rel=1e-6)
    assert last["val_acc"] == pytest.approx((averaged.argmax(1) == y).float().mean().item(), abs=1.01 / len(y))
    # without flips in training (the study's augmentation) it is judged on the images as they are
    unflipped = train(TINY, dataclasses.replace(cfg, augment="study"), out_dir=tmp_path / "study", data=synth)
    plain = _view_logits(load_model(tmp_path / "study" / "last.pt")[0], synth)[0]
    assert unflipped.history[-1]["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(plain, y).item(), rel=1e-4)
