import dataclasses
import json

import pytest
from typer.testing import CliRunner

from fireablate.cli import app
from fireablate.config import RECIPES, TrainConfig
from fireablate.training import train

from .helpers import TINY


@pytest.mark.parametrize("recipe, flipped", [("fast", True), ("study", False)])
def test_evaluate_judges_a_model_file_as_its_run_did(tmp_path, recipe, flipped):
    """`fireablate evaluate runs/ID/last.pt` repeats the run's own final validation figures: for a
    recipe with test-time views (fast) from the mean over each image and its mirror (and the
    one-pixel moves of both the recipe names), otherwise from the images as they are; --flip /
    --no-flip choose."""
    config = TrainConfig(data="synthetic", limit_train=200, limit_test=100, batch_size=32, epochs=3, recipe=recipe,
                         device="cpu", precision="fp32")
    result = train(TINY, config, out_dir=tmp_path / "run")  # its data as evaluate loads them, from the config
    runner = CliRunner()

    def evaluate(*flags):
        shown = runner.invoke(app, ["evaluate", str(tmp_path / "run" / "last.pt"), "--json", *flags])
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.stdout)

    own = evaluate()
    assert own["flip"] is flipped and own["moves"] == (RECIPES[recipe].tta_moves if flipped else 0)
    assert own["loss"] == pytest.approx(result.final_val_loss, rel=1e-6)
    assert own["accuracy"] == pytest.approx(result.final_val_acc, abs=1.01 / result.n_test)
    other = evaluate("--no-flip" if flipped else "--flip")
    assert other["flip"] is not flipped and other["loss"] != pytest.approx(own["loss"], rel=1e-6)
    text = runner.invoke(app, ["evaluate", str(tmp_path / "run" / "last.pt")]).stdout
    assert ("averaged with its mirror image" in text) is flipped


def test_a_fast_run_of_an_earlier_recipe_is_judged_without_flips(tmp_path, monkeypatch):
    """A `fast` run trained before flip averaging was part of the recipe (its id is that of the
    earlier recipe) was judged without flips, and evaluate repeats that."""
    earlier = dataclasses.replace(RECIPES["fast"], label_smoothing=0.1, tta_flip=False, tta_moves=0, crop_pad=4)
    monkeypatch.setitem(RECIPES, "fast", earlier)
    config = TrainConfig(data="synthetic", limit_train=200, limit_test=100, batch_size=32, epochs=1, recipe="fast",
                         device="cpu", precision="fp32")
    result = train(TINY, config, out_dir=tmp_path / "run")
    monkeypatch.undo()  # today's recipe again
    shown = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "last.pt"), "--json"])
    assert shown.exit_code == 0, shown.output
    judged = json.loads(shown.stdout)
    assert judged["flip"] is False and judged["loss"] == pytest.approx(result.final_val_loss, rel=1e-6)
