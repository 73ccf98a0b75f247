import pytest

from fireablate.errors import UsageError
from fireablate.params import count
from fireablate.presets import PRESETS, apply_overrides, canonical, get_preset, parse_values, resolve
from fireablate.spec import SqueezeNetSpec

# The counts written beside each preset in presets.py.
EXPECTED = {
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "cifar": 1_096_398,
    "cifar_simple_bypass": 345_246,
    "cifar_complex_bypass": 490_910,
    "cifar_valid_padding": 1_096_398,
    "cifar_early_pool": 1_096_398,
    "cifar_optimized": 1_542_302,
    "cifar_tiny": 6_269,
    "alexnet_cifar": 8_981_578,
}


def test_every_preset_is_counted_and_documented():
    assert set(PRESETS) == set(EXPECTED)
    for name, spec in PRESETS.items():
        assert count(spec).params == EXPECTED[name], name


def test_cifar_matches_the_studys_metaparameters():
    meta = PRESETS["cifar"].meta
    assert (meta.base_e, meta.incr_e, meta.freq, meta.pct3x3, meta.sr) == (128, 128, 1, 0.5, 0.125)
    opt = PRESETS["cifar_optimized"]
    assert (opt.meta.freq, opt.meta.sr, opt.extra_fires, opt.bypass, opt.extra_dropout) == (2, 0.5, (128,), "complex", 0.2)
    # the study: AlexNet 35.9 MB; ours is within 5%
    assert count(PRESETS["alexnet_cifar"]).mib() == pytest.approx(35.9, rel=0.05)


def test_overrides_parse_text_and_values_alike():
    a = resolve("cifar", {"sr": "0.5", "pool-after": "2,4", "batch_norm": "off"})
    b = resolve("cifar", {"sr": 0.5, "pool_after": (2, 4), "batch_norm": False})
    assert a == b and a.meta.sr == 0.5 and a.pool_after == (2, 4) and not a.batch_norm
    assert get_preset("cifar").meta.sr == 0.125  # presets are never changed in place


def test_explicit_fires_replace_metaparameters():
    spec = resolve("cifar", {"fires": "16:64:64,16:64:64,32:128:128", "pool_after": "2,3"})
    assert isinstance(spec, SqueezeNetSpec) and spec.meta is None and len(spec.fire_sizes()) == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sr": "abc"}, "--sr expects a number"),
        ({"n_fire": "2.5"}, "--n-fire expects a whole number"),
        ({"bogus": 1}, "unknown parameter 'bogus'"),
        ({"bypass": "sideways"}, "--bypass must be one of none, simple, complex"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(UsageError, match=message):
        resolve("cifar", overrides)


def test_alexnet_refuses_fire_metaparameters():
    with pytest.raises(UsageError, match="does not apply to alexnet_cifar"):
        apply_overrides(PRESETS["alexnet_cifar"], {"sr": 0.5})
    assert resolve("alexnet_cifar", {"num_classes": 100}).num_classes == 100


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UsageError, match="choose one of: squeezenet1_0, squeezenet1_1, cifar"):
        get_preset("cifr")


def test_parse_values():
    assert parse_values("0.125:1.0:0.125") == ["0.125", "0.250", "0.375", "0.500", "0.625", "0.750", "0.875", "1.000"]
    assert parse_values("none, simple,complex") == ["none", "simple", "complex"]
    with pytest.raises(UsageError, match="twice"):
        parse_values("1,1")
    with pytest.raises(UsageError, match="is empty"):
        parse_values("1:0:0.5")
    assert canonical("--base-e") == "base_e"
