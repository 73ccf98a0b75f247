"""Device and precision choice: auto picks bf16 wherever the hardware has it natively."""

import pytest
import torch

from fireablate.devices import cpu_bf16_feature, resolve_device, resolve_precision
from fireablate.errors import UsageError

CPU = torch.device("cpu")


def test_devices_that_exist_and_those_that_do_not():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU is available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    "capabilities, feature",
    [
        ({"amx_bf16": True, "avx512_bf16": True}, "amx_bf16"),  # Intel Sapphire Rapids
        ({"amx_bf16": False, "avx512_bf16": True, "avx512": True}, "avx512_bf16"),  # AMD EPYC Zen 4
        ({"bf16": True}, "bf16"),  # Arm
        ({"sve_bf16": True}, "sve_bf16"),
        ({"avx2": True, "avx512": True}, None),  # fast fp32 only
    ],
)
def test_auto_precision_follows_the_cpu_capabilities(capabilities, feature):
    assert cpu_bf16_feature(lambda: capabilities) == feature
    precision, why = resolve_precision("auto", CPU, cpu_feature=lambda: cpu_bf16_feature(lambda: capabilities))
    assert precision == ("bf16" if feature else "fp32")
    assert (feature or "no native bf16") in why


def test_an_explicit_precision_is_kept_whatever_the_cpu():
    assert resolve_precision("fp32", CPU, cpu_feature=lambda: "amx_bf16") == ("fp32", "asked for")
    assert resolve_precision("bf16", CPU, cpu_feature=lambda: None) == ("bf16", "asked for")


def test_this_machine_gets_a_decision_with_a_reason():
    precision, why = resolve_precision("auto", CPU)
    assert precision in ("bf16", "fp32") and why.startswith("auto: ")


def test_keeping_cpu_memory_applies_on_glibc_and_training_still_allocates():
    """Protects the CPU speed-up from glibc keeping freed memory: the setting applies on Linux
    with glibc (this project's machines), twice is harmless, and large allocations still work."""
    import platform

    from fireablate.devices import keep_cpu_memory

    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_cpu_memory() is on_glibc
    assert keep_cpu_memory() is on_glibc
    for _ in range(3):  # 64 MB blocks, freed and asked for again: served from the kept heap
        big = torch.ones(16 * 2**20)
        assert big.sum().item() == 16 * 2**20
        del big
