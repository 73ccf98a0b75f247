import os

import pytest

# Tests run on the CPU whatever machine they are on.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _private_state(tmp_path, monkeypatch):
    """Each test gets its own ledger and decode cache, never the user's or the repository's."""
    monkeypatch.setenv("FIREABLATE_LEDGER", str(tmp_path / "ledger" / "ledger.csv"))
    monkeypatch.setenv("FIREABLATE_CACHE", str(tmp_path / "cache"))
