import math
import random

import pytest
import torch
import torchvision

from fireablate.errors import SpecError, UsageError
from fireablate.model import Fire, build, load_model, save_model, summarize
from fireablate.params import count
from fireablate.presets import PRESETS
from fireablate.spec import Metaparameters, SqueezeNetSpec


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_calculator_equals_torch_for_every_preset(name):
    assert n_params(build(PRESETS[name])) == count(PRESETS[name]).params


def _random_specs(n, seed=0):
    rng = random.Random(seed)
    made = 0
    while made < n:
        n_fire = rng.randint(1, 6)
        try:
            spec = SqueezeNetSpec(
                meta=Metaparameters(
                    base_e=rng.choice([8, 16, 24, 48, 64]),
                    incr_e=rng.choice([0, 8, 16, 32]),
                    freq=rng.randint(1, 3),
                    pct3x3=rng.choice([0.1, 0.25, 0.37, 0.5, 0.75, 0.9]),
                    sr=rng.choice([0.125, 0.2, 0.33, 0.5, 0.75, 1.0]),
                    n_fire=n_fire,
                ),
                extra_fires=tuple(rng.choice([8, 16]) for _ in range(rng.randint(0, 1))),
                stem_filters=rng.choice([8, 16, 32]),
                stem_kernel=rng.choice([1, 3, 5]),
                stem_stride=rng.choice([1, 2]),
                padding=rng.choice(["same", "valid"]),
                pool_after=tuple(sorted(rng.sample(range(1, n_fire + 2), rng.randint(0, 2)))),
                bypass=rng.choice(["none", "complex"]),
                batch_norm=rng.random() < 0.5,
                num_classes=rng.choice([2, 10, 100]),
                in_channels=rng.choice([1, 3]),
                input_size=rng.choice([16, 32]),
            )
            spec.layers()
        except SpecError:
            continue
        made += 1
        yield spec


@pytest.mark.parametrize("spec", list(_random_specs(40)), ids=lambda s: "random")
def test_calculator_equals_torch_for_random_metaparameters(spec):
    model = build(spec)
    assert n_params(model) == count(spec).params
    # the spec's size arithmetic agrees with the shapes torch computes
    out = model.eval()(torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size))
    assert out.shape == (1, spec.num_classes)


@pytest.mark.parametrize("name", list(PRESETS))
def test_forward_and_backward_for_every_preset(name):
    spec = PRESETS[name]
    size = min(spec.input_size, 128) if "squeezenet" in name else spec.input_size  # keep ImageNet nets quick
    torch.manual_seed(0)
    model = build(spec)
    x = torch.randn(2, spec.in_channels, size, size)
    logits = model(x)
    assert logits.shape == (2, spec.num_classes)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_same_parameters_and_outputs_as_torchvision(name):
    ours, theirs = build(PRESETS[name]), getattr(torchvision.models, name)()
    assert [(k, v.shape) for k, v in ours.named_parameters()] == [(k, v.shape) for k, v in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


def test_torchvision_names_and_fire_modules():
    model = build(PRESETS["cifar"])
    fires = [m for m in model.features if isinstance(m, Fire)]
    assert len(fires) == 6
    assert {"squeeze", "expand1x1", "expand3x3"} <= dict(fires[0].named_children()).keys()
    assert hasattr(model, "classifier")


def test_xavier_uniform_init_by_default():
    model = build(PRESETS["cifar"], seed=0)
    conv = model.features[0]
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound  # uniform fills its range; torch's default is narrower
    assert torch.count_nonzero(conv.bias) == 0


def test_seeded_build_is_reproducible():
    a, b = build(PRESETS["cifar"], seed=3), build(PRESETS["cifar"], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_and_load_round_trip(tmp_path):
    model = build(PRESETS["cifar_optimized"], seed=1)
    save_model(tmp_path / "m.pt", model)
    loaded, payload = load_model(tmp_path / "m.pt")
    assert loaded.spec == model.spec
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(UsageError, match="is not a fireablate model file"):
        load_model(tmp_path / "junk.pt")


def test_summarize_reports_real_shapes():
    rows = summarize(build(PRESETS["cifar"]))
    assert rows[0][:3] == ("features.0", "Conv2d", (96, 32, 32))
    assert rows[-1][2] == (10, 1, 1)
    assert sum(r[3] for r in rows) == count(PRESETS["cifar"]).params


def test_save_model_replaces_only_its_own_files(tmp_path):
    """Protects save_model's overwrite check (build --output, a run's best.pt): an existing file
    that is not a fireablate model file -- text, a checkpoint, an empty file -- is refused and left
    as it was; an earlier model file is replaced; overwrite=True replaces anything."""
    model = build(PRESETS["cifar"], seed=1)
    others = {"notes.txt": b"notes", "empty.pt": b"", "checkpoint.pt": _torch_bytes({"format": "fireablate-checkpoint/2"})}
    for name, content in others.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError, match=f"{name} exists and is not a fireablate model file.*--overwrite"):
            save_model(tmp_path / name, model)
        assert (tmp_path / name).read_bytes() == content
    save_model(tmp_path / "m.pt", build(PRESETS["cifar"], seed=2), {"seed": 2})
    save_model(tmp_path / "m.pt", model, {"seed": 1})
    assert load_model(tmp_path / "m.pt")[1]["seed"] == 1
    save_model(tmp_path / "notes.txt", model, overwrite=True)
    assert load_model(tmp_path / "notes.txt")[0].spec == model.spec


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_foreign_or_damaged_model_file_is_one_clear_error_and_no_warning(tmp_path):
    """Protects load_model's one-line refusals: a raw pickle (torch warns about its protocol before
    refusing it: that warning would be a second line), a file with the marker but a damaged spec."""
    import pickle
    import warnings

    from fireablate.spec import to_dict

    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"format": "fireablate-model/1"}))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match="is not a fireablate model file"):
            load_model(tmp_path / "pickle.pt")
    assert [str(w.message) for w in seen] == []
    spec = to_dict(PRESETS["cifar"])
    (tmp_path / "damaged.pt").write_bytes(_torch_bytes({"format": "fireablate-model/1", "spec": spec, "state_dict": {}}))
    with pytest.raises(UsageError, match="damaged.pt is a damaged fireablate model file"):
        load_model(tmp_path / "damaged.pt")
    (tmp_path / "nospec.pt").write_bytes(_torch_bytes({"format": "fireablate-model/1"}))
    with pytest.raises(UsageError, match="nospec.pt is a damaged fireablate model file"):
        load_model(tmp_path / "nospec.pt")


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64])
def test_a_seed_torch_cannot_take_is_a_usage_error(seed):
    """build --seed 2**64 was a traceback from torch.manual_seed; the range is train's --seed's."""
    with pytest.raises(UsageError, match=r"--seed must be between 0 and 2\*\*63 - 1"):
        build(PRESETS["cifar"], seed=seed)


def test_batch_norm_hands_on_its_gradient_in_the_channels_last_layout():
    """Protects the CPU speed of conv-relu-bn: batch norm's backward gets a channels_last gradient
    (torch's kernel for mixed layouts was 17x slower), and the numbers do not change."""
    import torch
    from torch import nn

    from fireablate.model import BatchNorm2d

    torch.manual_seed(0)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    seen = []
    ours, plain = BatchNorm2d(8), nn.BatchNorm2d(8)
    out = ours(x)
    out.register_hook(lambda g: seen.append(g))  # runs after the module's own hook, in registration order
    grad = torch.randn(4, 8, 6, 6)  # the plain layout, as a following conv's backward gives it
    (gx,) = torch.autograd.grad(out, x, grad)
    x2 = x.detach().clone().requires_grad_()
    (gx_plain,) = torch.autograd.grad(plain(x2), x2, grad)
    assert torch.allclose(gx, gx_plain, atol=1e-6)
    assert not grad.is_contiguous(memory_format=torch.channels_last)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and torch.equal(seen[0], grad)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_cpu_dropout_keeps_each_unit_with_probability_one_minus_p_and_its_gradient_follows(p):
    """Protects the rand-based CPU dropout: the same distribution and scaling as nn.Dropout, the
    gradient through the same mask, the input's layout kept, and nothing done in evaluation."""
    import torch

    from fireablate.model import Dropout

    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(64, 32, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = drop(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01  # 131,072 draws: 0.01 is > 7 sigma
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    assert out.is_contiguous(memory_format=torch.channels_last)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g != 0, kept) and torch.allclose(g[kept], torch.full_like(g[kept], 1 / (1 - p)))
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
