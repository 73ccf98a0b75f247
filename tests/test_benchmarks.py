"""The benchmark scripts run: they reach into the training internals, which no other test of
theirs would notice changing (one once called ``_evaluate`` with an argument it had lost)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    return done.value.code


def test_fast_recipe_benchmark_trains_and_compares_its_evaluations(tmp_path, monkeypatch):
    out = tmp_path / "summary.json"
    code = _run("fast_recipe.py", ["--data", "synthetic", "--limit-train", "256", "--limit-test", "128",
                                   "--epochs", "1", "--batch-size", "64", "--halflives", "0.5",
                                   "--precision", "fp32", "--device", "cpu", "--json", str(out)], monkeypatch)
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["n_train"] == 256 and summary["n_test"] == 128 and len(summary["curve"]) == 1
    # every way of judging the one network: weights and the average, each plain, flipped, recalibrated
    assert set(summary["final"]) == {f"{m}{r}{f}" for m in ("weights", "ema 0.5 epochs")
                                     for r in ("", " + recalibrated") for f in ("", " + flip")}
    assert all(0 <= a <= 1 for a in summary["final"].values())
    assert summary["final"]["weights"] == summary["curve"][-1]  # the same network, judged the same way


def test_fast_recipe_saves_model_files_that_tta_views_scores(tmp_path, monkeypatch):
    saved, out = tmp_path / "models", tmp_path / "views.json"
    assert _run("fast_recipe.py", ["--data", "synthetic", "--limit-train", "256", "--limit-test", "128",
                                   "--epochs", "1", "--batch-size", "64", "--halflives", "", "--precision", "fp32",
                                   "--device", "cpu", "--save", str(saved), "--json", str(tmp_path / "s.json")],
                monkeypatch) == 0
    trained = json.loads((tmp_path / "s.json").read_text())["final"]
    assert _run("tta_views.py", [str(saved / "weights.pt"), "--data", "synthetic", "--limit-test", "128",
                                 "--precision", "fp32", "--device", "cpu", "--json", str(out)], monkeypatch) == 0
    scored = json.loads(out.read_text())["accuracy"]
    assert scored["plain"] == pytest.approx(trained["weights"]) and scored["flip"] == pytest.approx(trained["weights + flip"])
    assert set(scored) >= {"flip + 4 diagonal", "flip + 8"}
