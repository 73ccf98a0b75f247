import pytest
import torchvision

from fireablate.errors import SpecError
from fireablate.params import compare_fire, count, size_mib
from fireablate.presets import PRESETS


def test_the_papers_calculator_example():
    cmp = compare_fire(256, 512, sr=0.125, pct3x3=0.5)
    assert cmp.sizes.squeeze == 64
    assert cmp.fire_weights == 180_224
    assert cmp.conv_weights == 1_179_648
    assert f"{cmp.reduction:.2%}" == "84.72%"
    assert compare_fire(256, 512, squeeze=64).fire_weights == 180_224


def test_compare_fire_needs_exactly_one_squeeze_size():
    with pytest.raises(SpecError, match="not both or neither"):
        compare_fire(256, 512, sr=0.125, squeeze=64)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_imagenet_counts_agree_with_torchvision_metadata(name):
    weights = getattr(torchvision.models, name.replace("squeezenet", "SqueezeNet") + "_Weights").IMAGENET1K_V1
    c = count(PRESETS[name])
    assert c.params == weights.meta["num_params"]
    # torchvision's "_ops" for these models is multiply-accumulates in billions
    assert round(c.macs / 1e9, 3) == weights.meta["_ops"]


def test_size_is_float32_mib_as_in_the_paper():
    c = count(PRESETS["squeezenet1_0"])
    assert c.params == 1_248_424
    assert f"{c.mib():.1f}" == "4.8"
    assert c.mib(8) == pytest.approx(c.mib() / 4)
    assert size_mib(2**18, 32) == 1.0


def test_per_layer_rows_add_up():
    c = count(PRESETS["cifar_optimized"])
    assert sum(r.weights + r.biases + r.bn for r in c.rows) == c.params
    bypass = [r for r in c.rows if r.kind == "bypass"]
    assert [r.name for r in bypass] == ["fire2/bypass", "fire5/bypass", "fire7/bypass"]
    assert all(r.bn == 2 * r.out_channels for r in bypass)
