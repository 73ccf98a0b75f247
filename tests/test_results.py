"""Grouping ledger rows into variants and experiments, and how their numbers read."""

import csv
import io
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fireablate import ledger as L
from fireablate import results as R
from fireablate.cli import app

from .test_plots import add, add_compressed, two_experiments

runner = CliRunner()


def test_group_runs_shows_the_data_recipe_epochs_and_run_ids(tmp_path):
    path = tmp_path / "l.csv"
    ids = [add(path, overrides={"sr": "0.25"}, param="sr", value="0.25", seed=s, acc=a, recipe="fast", epochs=4)
           for s, a in enumerate((0.5, 0.7))]
    failed = add(path, overrides={"sr": "0.5"}, param="sr", value="0.5", recipe="fast", epochs=4, status="failed")
    table = R.group_runs(L.read(path).frame())
    first = table.iloc[0]
    assert first["model"] == "cifar (sr=0.25)" and first["sweep"] == "sr=0.25"
    assert (first["data"], first["train images"], first["recipe"], first["epochs"]) == ("synthetic", 2000, "fast", 4)
    assert first["acc mean (fraction)"] == pytest.approx(0.6) and first["acc sd (fraction)"] == pytest.approx(0.1414, abs=1e-4)
    assert first["run ids"].split() == ids and first["size MB"] == pytest.approx(first["params"] * 4 / 1e6)
    assert table.iloc[1]["run ids"] == failed and table.iloc[1]["status"] == "1 failed"
    # integers stay integers in every file
    assert str(table["train images"].dtype) == "Int64" and str(table["epochs"].dtype) == "Int64"
    text = table.to_csv(index=False)
    assert ",2000,fast,4," in text and "2000.0" not in text and ",4.0," not in text
    assert json.loads(table.to_json(orient="records"))[0]["train images"] == 2000


def test_a_run_trained_again_counts_once_and_a_failed_then_done_run_is_done(tmp_path):
    path = tmp_path / "l.csv"
    rid = add(path, overrides={"sr": "0.25"}, param="sr", value="0.25", status="failed")
    add(path, overrides={"sr": "0.25"}, param="sr", value="0.25", acc=0.6, run=rid)
    add(path, overrides={"sr": "0.25"}, param="sr", value="0.25", acc=0.8, run=rid)  # --force: same id, newer row
    row = R.group_runs(L.read(path).frame()).iloc[0]
    assert (row["runs"], row["done"], row["status"]) == (1, 1, "1 done")
    assert row["acc mean (fraction)"] == pytest.approx(0.8)  # the latest result of the run, once


def test_experiments_are_told_apart_by_what_differs(tmp_path):
    path = tmp_path / "l.csv"
    two_experiments(path)
    for value in ("0.125", "0.25"):
        add(path, overrides={"sr": value}, param="sr", value=value, acc=0.9, recipe="fast")
    data = R.sweep_data(L.read(path).frame(), ["sr"])
    assert data.experiments == ["synthetic, 2,000 images, recipe study, 100 epochs",
                                "cifar10-jpeg, 20,000 images, recipe study, 100 epochs",
                                "synthetic, 2,000 images, recipe fast, 30 epochs"]
    assert data.described.separated_by == ["data", "train images", "recipe", "epochs"]
    assert data.described.common == ""
    # one experiment: its label says what it is, and the caption says the rest
    one = R.sweep_data(L.read(path).frame()[lambda f: f["data"] == "/data/cifar10-jpeg"], ["sr"])
    assert one.experiments == ["cifar10-jpeg, 20,000 training images; recipe study; 100 epochs"]
    assert one.caption() == "cifar10-jpeg, 20,000 training images; recipe study; 100 epochs; 2 seeds per point"


def test_a_hand_set_learning_rate_is_its_own_experiment(tmp_path):
    path = tmp_path / "l.csv"
    for lr in (None, 0.01):
        for value in ("0.125", "0.25"):
            add(path, overrides={"sr": value}, param="sr", value=value, acc=0.5, lr=lr)
    data = R.sweep_data(L.read(path).frame(), ["sr"])
    assert data.experiments == ["lr 0.001", "lr 0.01"]  # the recipe's own lr, and the one set by hand
    assert data.described.separated_by == ["lr"] and "recipe study" in data.described.common


def test_a_sweep_over_presets_keeps_runs_with_other_overrides_apart(tmp_path):
    path = tmp_path / "l.csv"
    add(path, preset="cifar", param="preset", value="cifar", acc=0.8)
    add(path, preset="cifar_optimized", param="preset", value="cifar_optimized", acc=0.85)
    add(path, preset="cifar", overrides={"dropout": 0.2}, param="preset", value="cifar", acc=0.7)
    add(path, preset="cifar_valid_padding", overrides={"dropout": 0.2}, param="preset", value="cifar_valid_padding", acc=0.75)
    data = R.sweep_data(L.read(path).frame(), ["preset"])
    assert data.experiments == ["preset defaults", "dropout=0.2"]
    assert data.described.separated_by == ["network overrides"]
    assert data.points[["experiment", "preset"]].values.tolist() == [
        ["preset defaults", "cifar"], ["preset defaults", "cifar_optimized"],
        ["dropout=0.2", "cifar"], ["dropout=0.2", "cifar_valid_padding"]]


def test_sizes_in_mb_or_mib_with_the_unit_in_the_column(tmp_path):
    path = tmp_path / "l.csv"
    add(path, acc=0.5)
    mb = json.loads(runner.invoke(app, ["runs", "--ledger", str(path), "--json"]).stdout)[0]
    mib = json.loads(runner.invoke(app, ["runs", "--ledger", str(path), "--json", "--size-unit", "MiB"]).stdout)[0]
    assert mb["size MB"] == pytest.approx(1_096_398 * 4 / 10**6) and "size MiB" not in mb
    assert mib["size MiB"] == pytest.approx(1_096_398 * 4 / 2**20)
    assert mb["acc mean (fraction)"] == 0.5  # fractions for scripts
    report = runner.invoke(app, ["report", "--ledger", str(path), "--size-unit", "MiB"])
    assert "size MiB" in report.stdout and "4.18" in report.stdout and "acc mean (%)" in report.stdout
    bad = runner.invoke(app, ["runs", "--ledger", str(path), "--size-unit", "GB"])
    assert bad.exit_code == 2 and "'GB' is not one of 'MB', 'MiB'" in bad.stderr
    with pytest.raises(R.UsageError, match="MB .* or MiB"):
        R.size_column("kB")


@pytest.mark.parametrize("col, value, shown", [
    ("acc mean (fraction)", 0.4345, "43.45%"),
    ("acc sd (fraction)", 0.012, "1.20%"),
    ("size / alexnet_cifar", 1_096_398 / 8_981_578, "8.2x smaller"),
    ("size / cifar", 8_981_578 / 1_096_398, "8.2x larger"),
    ("size / cifar", 1.02, "1.02x larger"),
    ("size / cifar", 1.0, "same size"),
    ("size MB", 4.385592, "4.39"),
    ("size MB", 0.0512, "0.0512"),
    ("params", 1096398, "1,096,398"),
    ("train images", 2000.0, "2,000"),
    ("epochs", 4.0, "4"),
    ("runs", 3, "3"),
    ("data", "/tmp/real/cifar10-jpeg", "cifar10-jpeg"),
    ("acc sd (fraction)", float("nan"), ""),
    ("epochs", pd.NA, ""),
])
def test_format_cell(col, value, shown):
    assert R.format_cell(col, value) == shown


def test_runs_shows_short_ids_that_plot_curves_takes(tmp_path):
    path = tmp_path / "l.csv"
    rid = add(path, param="sr", value="0.125", acc=0.7)
    add(path, param="sr", value="0.125", seed=1, acc=0.72)
    (tmp_path / rid).mkdir()
    with open(tmp_path / rid / "history.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["epoch", "train_loss", "train_acc", "val_loss", "val_acc"], [1, 2.0, 0.3, 2.1, 0.7]])
    listed = runner.invoke(app, ["runs", "--ledger", str(path)])
    assert listed.exit_code == 0, listed.output
    assert rid[:8] in listed.stdout and rid not in listed.stdout
    assert "acc mean (%)" in listed.stdout and "71.00%" in listed.stdout
    assert "data synthetic; 2,000 training images; recipe study; 100 epochs" in listed.stdout
    curves = runner.invoke(app, ["plot", "--kind", "curves", rid[:8], "--ledger", str(path), "--out-dir", str(tmp_path / "f")])
    assert curves.exit_code == 0, curves.output
    full = pd.read_csv(io.StringIO(runner.invoke(app, ["runs", "--ledger", str(path), "--csv"]).stdout))
    assert full["run ids"].iloc[0].split()[0] == rid  # files keep whole ids


def test_short_ids_grow_until_they_are_unique():
    ids = ["abcdef012345", "abcdef019999", "123456789abc"]
    assert R.short_ids(ids) == {"abcdef012345": "abcdef012", "abcdef019999": "abcdef019", "123456789abc": "123456789"}
    assert R.short_ids(ids[1:]) == {"abcdef019999": "abcdef01", "123456789abc": "12345678"}


SIX = "cifar (compressed: density paper, 6 bits, Huffman, retrain 1, finetune 1)"
EIGHT = "cifar (compressed: density paper, 8 bits, Huffman, retrain 1, finetune 1)"


def test_compressions_of_one_parent_pool_only_their_own_seeds(tmp_path):
    """Protects report and runs from averaging different compressions: two compressions of one
    parent that differ only in bits (same epochs, lr and seed) are two variants, named by their
    settings, while one compression's seeds pool; the parent stays a variant of its own."""
    path = tmp_path / "l.csv"
    parent = add(path, acc=0.8)
    six = [add_compressed(path, parent, acc, seed=s, bits="6") for s, acc in enumerate((0.70, 0.74))]
    eight = add_compressed(path, parent, 0.78, bits="8")
    table = R.report_table(L.read(path).frame()).set_index("model")
    assert table.loc[SIX, "runs"] == 2 and table.loc[SIX, "acc mean (fraction)"] == pytest.approx(0.72)
    assert table.loc[EIGHT, "runs"] == 1 and table.loc[EIGHT, "acc mean (fraction)"] == pytest.approx(0.78)
    assert table.loc["cifar", "runs"] == 1 and len(table) == 3
    grouped = json.loads(runner.invoke(app, ["runs", "--ledger", str(path), "--json"]).stdout)
    assert {g["model"]: g["run ids"].split() for g in grouped} == {"cifar": [parent], SIX: six, EIGHT: [eight]}
    listed = pd.read_csv(io.StringIO(runner.invoke(app, ["report", "--ledger", str(path), "--csv"]).stdout))
    assert sorted(listed["model"]) == sorted(["cifar", SIX, EIGHT])
    shown = runner.invoke(app, ["report", "--ledger", str(path), "--markdown"]).stdout
    assert f"| {SIX} |" in shown and f"| {EIGHT} |" in shown


def test_a_compressed_models_size_is_its_file(tmp_path):
    """Protects the sizes of compressed models in runs, report and figures: the bytes of the
    file (the ledger's mib), not float32 bytes of the parameters it stores, which 6 and 8 bits
    share; a trained model's size stays its float32 parameters."""
    path = tmp_path / "l.csv"
    parent = add(path, acc=0.8)
    add_compressed(path, parent, 0.7, bits="6", mib=0.3)
    add_compressed(path, parent, 0.75, bits="8", mib=0.4)
    table = R.report_table(L.read(path).frame(), size_unit="MiB").set_index("model")
    assert table.loc[SIX, "size MiB"] == pytest.approx(0.3) and table.loc[EIGHT, "size MiB"] == pytest.approx(0.4)
    assert table.loc["cifar", "size MiB"] == pytest.approx(1_096_398 * 4 / 2**20)
    assert table.loc[SIX, "params"] == table.loc[EIGHT, "params"] == 400_000
    runs = {g["model"]: g["size MB"] for g in json.loads(runner.invoke(app, ["runs", "--ledger", str(path), "--json"]).stdout)}
    assert runs[EIGHT] == pytest.approx(0.4 * 2**20 / 1e6)
    assert "sizes in MB (float32 parameters, compressed models' files)" in runner.invoke(
        app, ["report", "--ledger", str(path)]).stdout.replace("\n", " ")


def test_labels_tell_compressions_apart_by_the_settings_they_do_not_share(tmp_path):
    """Protects the figure labels of compressed models: side by side they name only the settings
    that differ ('cifar (compressed: density paper, 6 bits)'), the caption the ones all share; and
    a figure's experiments say which are compressed and which trained (no empty 'init ')."""
    path = tmp_path / "l.csv"
    parent = add(path, acc=0.8)
    add_compressed(path, parent, 0.7, bits="6")
    add_compressed(path, parent, 0.75, bits="8")
    add_compressed(path, parent, 0.6, bits="4", density="0.3")
    models = L.read(path).frame()
    labels, caption = R.short_labels(models)
    assert labels == ["cifar", "cifar (compressed: density paper, 6 bits)", "cifar (compressed: density paper, 8 bits)",
                      "cifar (compressed: density 0.3, 4 bits)"]
    assert caption == "every compressed cifar: Huffman, retrain 1, finetune 1"
    assert R.short_labels(models.iloc[:2])[0] == ["cifar", SIX]  # one compressed model: every setting
    setups = models.assign(_setup=R._joined(models[R.SETUP_COLUMNS])).drop_duplicates("_setup").set_index("_setup")
    described = R.describe(setups, network=False)
    assert list(described.labels.values()) == ["trained, lr 0.001, 100 epochs",
                                               f"compressed, lr 0.0001, 2 epochs, init {parent[:8]}"]
    assert described.separated_by[0] == "compression"
