import csv
import hashlib
import io
import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fireablate import ledger as L
from fireablate import plots as P
from fireablate.cli import app
from fireablate.config import TrainConfig
from fireablate.errors import UsageError
from fireablate.params import count
from fireablate.presets import resolve

from .helpers import one_line_error

runner = CliRunner()


def add(path, preset="cifar", overrides=None, param="", value="", seed=0, acc=0.5, status="done", run=None,
        data="synthetic", n_train=2000, recipe="study", epochs=None, lr=None, **cells):
    """Append one ledger row as a run of these settings would have it, without training; ``cells``
    set ledger cells as they are (a compressed model's parent_run, compression, init, mib...)."""
    spec = resolve(preset, overrides or {})
    cfg = TrainConfig(data=data, seed=seed, recipe=recipe, epochs=epochs, lr=lr)
    key = repr((preset, sorted((overrides or {}).items()), param, value, seed, data, n_train, recipe, epochs, lr,
                sorted(cells.items())))
    rid = run or hashlib.sha256(key.encode()).hexdigest()[:12]
    row = L.make_row(run_id=rid, status=status, spec=spec, config=cfg, counts=count(spec), data_source=data,
                     data_identity=f"{data}|{n_train}", sweep_param=param, sweep_value=value)
    row.update(best_val_acc=acc if status == "done" else "", epochs=3, n_train=n_train, n_test=1000, **cells)
    L.append(path, row)
    return rid


def add_compressed(path, parent: str, acc: float, seed: int = 0, mib: float = 0.5, **settings):
    """Append the row a compression of run ``parent`` would append (compress._ledger_row's cells
    that tell compressions apart), without compressing: its settings as compression_text writes them."""
    from fireablate.compress import CompressSettings, compression_text

    text = compression_text(CompressSettings(**settings))
    return add(path, seed=seed, acc=acc, epochs=2, lr=0.0001, parent_run=parent, compression=text,
               init=parent + "digest", mib=mib, params=400_000)


def mean_lines(ax):
    """(x, y) of each drawn mean line, from its errorbar container."""
    return [(c.lines[0].get_xdata(), c.lines[0].get_ydata()) for c in ax.containers]


def boxes(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


@pytest.fixture
def sr_ledger(tmp_path):
    path = tmp_path / "l.csv"
    accs = {"0.125": [0.80, 0.82, 0.84], "0.25": [0.85, 0.86, 0.90], "0.5": [0.88, 0.89, 0.87]}
    for value, seeds in accs.items():
        for seed, acc in enumerate(seeds):
            add(path, overrides={"sr": value}, param="sr", value=value, seed=seed, acc=acc)
    add(path, overrides={"sr": "0.75"}, param="sr", value="0.75", status="failed")
    return path


def test_sweep_figure_plots_the_ledgers_numbers(sr_ledger):
    df = L.read(sr_ledger).frame()
    drawn = P.sweep_figure(df, "sr")
    fig, ax = drawn.figure, drawn.figure.axes[0]
    done = df[df["status"] == "done"]
    expected = done.groupby("sr")["best_val_acc"].mean() * 100
    [(xs, ys)] = mean_lines(ax)
    assert list(xs) == pytest.approx(expected.index.tolist())
    assert list(ys) == pytest.approx(expected.tolist())
    singles = ax.collections[0].get_offsets()
    drawn_runs = sorted(map(tuple, np.asarray(singles).round(9)))
    assert drawn_runs == sorted(zip(done["sr"], (done["best_val_acc"] * 100).round(9)))
    sizes = done.groupby("sr")["params"].first() * 4 / 1e6  # MB: 10^6 bytes, the study's unit
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{m:.3g} MB" for m in sizes)
    assert len(fig.axes) == 1  # no second size axis: sizes are labels
    assert list(ax.get_xticks()) == pytest.approx([0.125, 0.25, 0.5])  # ticks at the swept values
    assert ax.get_xlabel() == "Squeeze ratio (SR)"
    sd = done.groupby("sr")["best_val_acc"].std() * 100
    bars = ax.containers[0].lines[2][0].get_segments()
    assert sorted(seg[:, 1].min() for seg in bars) == pytest.approx(sorted((expected - sd).tolist()))
    n = 3  # the 95% CI of a mean of three seeds uses Student's t with 2 degrees of freedom
    ci = P.sweep_figure(df, "sr", errorbar="ci").figure.axes[0].containers[0].lines[2][0].get_segments()
    assert sorted(seg[:, 1].min() for seg in ci) == pytest.approx(sorted((expected - 4.303 * sd / n**0.5).tolist()))
    nobars = P.sweep_figure(df, "sr", errorbar="none").figure.axes[0]
    assert not nobars.containers[0].has_yerr
    # the table beside the figure says the same, accuracy as fractions
    table = drawn.table
    assert table["sr"].tolist() == [0.125, 0.25, 0.5]
    assert table["acc mean (fraction)"].tolist() == pytest.approx((expected / 100).tolist())
    assert table["n"].tolist() == [3, 3, 3] and table["size MB"].tolist() == pytest.approx(sizes.tolist())


def test_caption_title_and_axis_range(sr_ledger):
    fig = P.sweep_figure(L.read(sr_ledger).frame(), "sr").figure
    ax = fig.axes[0]
    title, caption = fig.get_suptitle(), fig.subfigs[0].get_suptitle()
    assert title == "Accuracy vs squeeze ratio"
    for words in ("synthetic, 2,000 training images", "recipe study", "100 epochs", "3 seeds per point", "mean ± sd"):
        assert words in caption.replace("\n", " ")
    assert "((" not in title + caption and "))" not in title + caption and ") (" not in title
    low, high = ax.get_ylim()
    assert 0 <= low < 80 and 90 < high <= 100 and ax.get_ylabel() == "Top-1 val. accuracy (%)"


def test_accuracy_near_100_percent_stays_below_100_and_labels_avoid_markers(tmp_path):
    path = tmp_path / "l.csv"
    for value, accs in (("0.125", (0.99, 1.0)), ("0.25", (1.0, 1.0)), ("0.5", (0.995, 1.0)), ("1.0", (1.0, 0.98))):
        for seed, acc in enumerate(accs):
            add(path, overrides={"sr": value}, param="sr", value=value, seed=seed, acc=acc)
    fig = P.sweep_figure(L.read(path).frame(), "sr").figure
    ax = fig.axes[0]
    assert ax.get_ylim()[1] <= 100
    fig.canvas.draw()
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    labels = boxes(fig, ax.texts)
    assert len(labels) == 4
    to_px = ax.transData.transform
    markers = [to_px(p) for p in zip(*mean_lines(ax)[0])]
    for box in labels:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1  # not clipped
        assert not any(box.x0 <= mx <= box.x1 and box.y0 <= my <= box.y1 for mx, my in markers)  # not on a marker
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1:])


def test_pct3x3_is_plotted_in_percent(tmp_path):
    path = tmp_path / "l.csv"
    for v, acc in (("0.125", 0.8), ("0.5", 0.85), ("0.875", 0.84)):
        add(path, overrides={"pct3x3": v}, param="pct3x3", value=v, acc=acc)
    drawn = P.sweep_figure(L.read(path).frame(), "pct3x3")
    ax = drawn.figure.axes[0]
    assert list(mean_lines(ax)[0][0]) == [12.5, 50.0, 87.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["12.5", "50", "87.5"]
    assert ax.get_xlabel() == "3x3 filters, % of expand filters"
    assert drawn.table["pct3x3"].tolist() == [0.125, 0.5, 0.875]  # the file keeps the ledger's fractions


def two_experiments(path):
    """The same SR sweep on synthetic images and on a real image folder, in one ledger."""
    accs = {"synthetic": {"0.125": [0.95, 0.97], "0.25": [0.96, 0.98], "0.5": [0.99, 0.97]},
            "/data/cifar10-jpeg": {"0.125": [0.41, 0.43], "0.25": [0.44, 0.42], "0.5": [0.45, 0.47]}}
    for data, by_value in accs.items():
        for value, seeds in by_value.items():
            for seed, acc in enumerate(seeds):
                add(path, overrides={"sr": value}, param="sr", value=value, seed=seed, acc=acc, data=data,
                    n_train=2000 if data == "synthetic" else 20000)


def test_two_experiments_over_one_parameter_are_two_lines_and_the_csv_equals_a_groupby(tmp_path):
    path = tmp_path / "l.csv"
    two_experiments(path)
    out = tmp_path / "figs"
    result = runner.invoke(app, ["plot", "--ledger", str(path), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 experiments over sr drawn apart (never averaged), differing in data, train images" in result.stdout
    assert "'synthetic, 2,000 images'" in result.stdout and "'cifar10-jpeg, 20,000 images'" in result.stdout
    table = pd.read_csv(out / "accuracy_vs_sr.csv")
    raw = L.read(path).frame()
    expected = (raw[raw["status"] == "done"].groupby(["data", "n_train", "sr"])
                .agg(mean=("best_val_acc", "mean"), sd=("best_val_acc", "std"), n=("run_id", "size"),
                     ids=("run_id", lambda s: set(s))).reset_index())
    merged = table.merge(expected, left_on=["data", "train images", "sr"], right_on=["data", "n_train", "sr"])
    assert len(merged) == len(table) == len(expected) == 6
    assert merged["acc mean (fraction)"].tolist() == pytest.approx(merged["mean"].tolist())
    assert merged["acc sd (fraction)"].tolist() == pytest.approx(merged["sd"].tolist())
    assert merged["n_x"].tolist() == merged["n_y"].tolist() == [2] * 6
    assert [set(i.split()) for i in merged["run ids"]] == merged["ids"].tolist()
    assert table["experiment"].nunique() == 2 and table.groupby("experiment").size().tolist() == [3, 3]
    # the figure draws the same two lines, labelled by what differs
    drawn = P.sweep_figure(raw, "sr")
    ax = drawn.figure.axes[0]
    lines = mean_lines(ax)
    assert len(lines) == 2
    for (xs, ys), (label, group) in zip(lines, table.groupby("experiment", sort=False)):
        assert list(ys) == pytest.approx((group["acc mean (fraction)"] * 100).tolist())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["synthetic, 2,000 images", "cifar10-jpeg, 20,000 images"]
    # the same networks on both lines: one size label per value, not two
    assert len(ax.texts) == 3
    # the legend is outside the axes, over no data
    drawn.figure.canvas.draw()
    legend, frame = boxes(drawn.figure, [ax.get_legend(), ax])
    assert not legend.overlaps(frame)
    assert "train images per line" in drawn.figure.subfigs[0].get_suptitle().replace("\n", " ")


def test_categorical_values_are_points_with_size_under_each_name(tmp_path):
    path = tmp_path / "l.csv"
    add(path, overrides={"sr": "0.125"}, param="sr", value="0.125", acc=0.80)  # the preset cifar, from another sweep
    add(path, overrides={"sr": "0.25"}, param="sr", value="0.25", acc=0.82)
    add(path, preset="alexnet_cifar", param="preset", value="alexnet_cifar", acc=0.75)
    add(path, preset="cifar_optimized", param="preset", value="cifar_optimized", acc=0.85)
    drawn = P.sweep_figure(L.read(path).frame(), "preset")
    ax = drawn.figure.axes[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert [n.split("\n")[0] for n in names] == ["cifar", "cifar_optimized", "alexnet_cifar"]  # every value, as declared
    assert names[2].split("\n")[1] == f"{count(resolve('alexnet_cifar')).params * 4 / 1e6:.3g} MB"
    line = ax.containers[0].lines[0]
    assert line.get_linestyle() == "None"  # categories are never joined by a line
    assert list(line.get_ydata()) == pytest.approx([80.0, 85.0, 75.0])
    assert drawn.table["preset"].tolist() == ["cifar", "cifar_optimized", "alexnet_cifar"]


def grid_ledger(path, seeds=2):
    accs = {}
    for i, sr in enumerate(("0.125", "0.25", "0.5")):
        for j, pct in enumerate(("0.25", "0.75")):
            for seed in range(seeds):
                acc = 0.6 + 0.05 * i + 0.02 * j + 0.01 * seed
                add(path, overrides={"sr": sr, "pct3x3": pct}, param="sr,pct3x3", value=f"{sr},{pct}", seed=seed, acc=acc)
                accs.setdefault((float(sr), float(pct)), []).append(acc)
    return accs


def test_a_grid_is_one_line_per_value_of_the_second_parameter(tmp_path):
    path = tmp_path / "l.csv"
    accs = grid_ledger(path)
    df = L.read(path).frame()
    drawn = P.sweep_figure(df, "sr,pct3x3")
    ax = drawn.figure.axes[0]
    lines = mean_lines(ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pct3x3=25%", "pct3x3=75%"]
    for (xs, ys), pct in zip(lines, (0.25, 0.75)):
        assert list(xs) == [0.125, 0.25, 0.5]
        assert list(ys) == pytest.approx([np.mean(accs[(sr, pct)]) * 100 for sr in (0.125, 0.25, 0.5)])
    assert len(ax.texts) == 6  # each point its own size: sizes differ between the lines
    swapped = P.sweep_figure(df, "sr,pct3x3", x="pct3x3").figure.axes[0]
    assert [t.get_text() for t in swapped.get_legend().get_texts()] == ["sr=0.125", "sr=0.25", "sr=0.5"]
    assert list(mean_lines(swapped)[0][0]) == [25.0, 75.0]


def test_heatmap_cells_hold_mean_accuracy_and_size(tmp_path):
    path = tmp_path / "l.csv"
    accs = grid_ledger(path)
    drawn = P.heatmap_figure(L.read(path).frame(), "sr,pct3x3")
    ax = drawn.figure.axes[0]
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 3)  # rows: pct3x3, columns: sr
    for (sr, pct), values in accs.items():
        i, j = (0.25, 0.75).index(pct), (0.125, 0.25, 0.5).index(sr)
        assert grid[i, j] == pytest.approx(np.mean(values) * 100)
        size = count(resolve("cifar", {"sr": sr, "pct3x3": pct})).params * 4 / 1e6
        cell = next(t.get_text() for t in ax.texts if t.get_position() == (j, i))
        assert cell.startswith(f"{np.mean(values) * 100:.1f} ± ") and cell.endswith(f"%\n{size:.3g} MB")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["25%", "75%"]
    assert len(drawn.table) == 6


def test_pareto_fronts_are_per_experiment_and_every_point_is_labelled(tmp_path):
    path = tmp_path / "l.csv"
    two_experiments(path)
    add(path, preset="alexnet_cifar", param="preset", value="alexnet_cifar", acc=0.99, data="synthetic")
    drawn = P.pareto_figure(L.read(path).frame())
    table = drawn.table
    assert set(table["experiment"]) == {"synthetic, 2,000 images", "cifar10-jpeg, 20,000 images"}
    assert len(table) == 7 and len(drawn.figure.axes[0].texts) == 7
    real = table[table["data"] == "/data/cifar10-jpeg"]
    # the real-data front is its own: the synthetic runs (all more accurate) do not dominate it
    assert real.loc[real["on front"], "model"].tolist() == ["cifar", "cifar (sr=0.25)", "cifar (sr=0.5)"]
    assert table.loc[table["on front"] & (table["data"] == "synthetic"), "model"].tolist()[-1] == "alexnet_cifar"
    assert "each with its own front" in drawn.notes[0]
    ax = drawn.figure.axes[0]
    drawn.figure.canvas.draw()
    assert not boxes(drawn.figure, [ax.get_legend()])[0].overlaps(boxes(drawn.figure, [ax])[0])


def _arrows(ax):
    from matplotlib.patches import FancyArrowPatch

    # FancyArrowPatch keeps its ends in data coordinates as _posA_posB (there is no getter).
    return [a._posA_posB for a in ax.get_children() if isinstance(a, FancyArrowPatch)]


def test_pareto_arrows_go_from_a_pooled_original_and_a_missing_one_is_said(tmp_path):
    """Protects the link to an original drawn as one of several seeds: the arrow starts at its
    variant's point (the mean over seeds), and a compressed model whose parent has no point gets
    no arrow and a note saying so."""
    path = tmp_path / "l.csv"
    seeds = [add(path, seed=s, acc=acc) for s, acc in enumerate((0.8, 0.9))]
    add_compressed(path, seeds[1], 0.7, bits="6", mib=0.5)
    add_compressed(path, "0123456789ab", 0.6, bits="4", mib=0.25)  # its parent is in another ledger
    drawn = P.pareto_figure(L.read(path).frame())
    table = drawn.table
    assert P.parent_links(table) == ([(0, 1)], ["0123456789ab"])
    assert table["run ids"][0].split() == seeds and table["parent run"].tolist() == ["", seeds[1], "0123456789ab"]
    [(start, end)] = _arrows(drawn.figure.axes[0])
    assert start == pytest.approx((1_096_398 * 4 / 1e6, 85.0)) and end == pytest.approx((0.5 * 2**20 / 1e6, 70.0))
    assert "1 compressed model(s) drawn without an arrow: their parent run(s) 0123456789ab" in drawn.notes[-1]


def test_pareto_links_real_compressions_to_their_original(tmp_path):
    """Protects the Pareto figure's link from original to compressed, on a real tiny run trained
    and compressed at 6 and 8 bits on synthetic images: the CSV beside the figure names each
    compressed model's parent run (the original point's run id), the figure draws an arrow from
    the original's point to each compressed one and says so in its legend, the compressed points
    sit at their files' sizes, and the figure renders."""
    from .test_compress import DATA, NET

    ledger = tmp_path / "runs" / "ledger.csv"
    trained = runner.invoke(app, ["train", *NET, *DATA, "--recipe", "fast", "--epochs", "1", "--batch-size", "50",
                                  "--device", "cpu", "--ledger", str(ledger)])
    assert trained.exit_code == 0, trained.output
    (parent,) = [r["run_id"] for r in L.read(ledger).rows]
    for bits in ("6", "8"):
        done = runner.invoke(app, ["compress", parent, "--ledger", str(ledger), "--bits", bits, "--retrain-epochs", "0",
                                   "--finetune-epochs", "1", "--device", "cpu"])
        assert done.exit_code == 0, done.output
    out = tmp_path / "figs"
    plotted = runner.invoke(app, ["plot", "--kind", "pareto", "--ledger", str(ledger), "--out-dir", str(out)])
    assert plotted.exit_code == 0, plotted.output
    assert matplotlib.image.imread(out / "pareto.png").shape[2] in (3, 4)
    table = pd.read_csv(out / "pareto.csv", dtype={"run ids": str, "parent run": str}, keep_default_na=False)
    rows = {r["run_id"]: r for r in L.read(ledger).rows}
    original = table[table["run ids"] == parent]
    compressed = table[table["parent run"] == parent]
    assert len(original) == 1 and original["parent run"].iloc[0] == "" and len(compressed) == 2
    assert sorted(compressed["label"]) == ["cifar (compressed: 6 bits)", "cifar (compressed: 8 bits)"]
    for _, point in compressed.iterrows():
        assert point["size MB"] == pytest.approx(rows[point["run ids"]]["mib"] * 2**20 / 1e6)
    drawn = P.pareto_figure(L.read(ledger).frame())
    ax = drawn.figure.axes[0]
    start = (original["size MB"].iloc[0], original["acc mean (fraction)"].iloc[0] * 100)
    ends = sorted(zip(compressed["size MB"], compressed["acc mean (fraction)"] * 100))
    arrows = _arrows(ax)
    assert len(arrows) == 2 and all(a == pytest.approx(start) for a, _ in arrows)
    assert all(b == pytest.approx(e) for b, e in zip(sorted(b for _, b in arrows), ends))
    assert "original → compressed" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "compressed models' files" in ax.get_xlabel()


def test_pareto_front():
    size = np.array([1.0, 2.0, 3.0, 4.0, 2.0])
    acc = np.array([80.0, 85.0, 84.0, 90.0, 70.0])
    assert P.pareto_front(size, acc).tolist() == [0, 1, 3]


def test_cli_plot_writes_figures_with_their_csv(sr_ledger, tmp_path):
    out = tmp_path / "figs"
    result = runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    png = out / "accuracy_vs_sr.png"
    assert f"wrote {png} (its points: accuracy_vs_sr.csv)" in result.stdout
    assert matplotlib.image.imread(png).shape[1] == int(7.5 * 150)  # default width, 150 dpi
    assert list(pd.read_csv(out / "accuracy_vs_sr.csv")["sr"]) == [0.125, 0.25, 0.5]
    hi = runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out), "--dpi", "300", "--style", "paper"])
    assert hi.exit_code == 0, hi.output
    assert matplotlib.image.imread(png).shape[1] == int(3.5 * 300)  # one paper column at 300 dpi
    assert runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out), "--format", "svg"]).exit_code == 0
    assert (out / "accuracy_vs_sr.svg").read_text().lstrip().startswith("<?xml")
    assert runner.invoke(app, ["plot", "--kind", "pareto", "--ledger", str(sr_ledger), "--out-dir", str(out), "--format", "pdf"]).exit_code == 0
    assert (out / "pareto.pdf").read_bytes().startswith(b"%PDF") and (out / "pareto.csv").is_file()
    for bad, message in ((["--format", "gif"], "'gif' is not one of"), (["--style", "poster"], "'poster' is not one of"),
                         (["--dpi", "5"], "--dpi must be between 30 and 2400"), (["--x", "pct3x3"], "no sweep")):
        wrong = runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out), *bad])
        assert wrong.exit_code in (1, 2) and message in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1


def test_cli_plot_grid_lines_and_heatmap(tmp_path):
    path = tmp_path / "l.csv"
    grid_ledger(path)
    out = tmp_path / "figs"
    lines = runner.invoke(app, ["plot", "--ledger", str(path), "--out-dir", str(out)])
    assert lines.exit_code == 0 and (out / "accuracy_vs_sr_by_pct3x3.png").is_file(), lines.output
    heat = runner.invoke(app, ["plot", "--kind", "heatmap", "--ledger", str(path), "--out-dir", str(out), "--size-unit", "MiB"])
    assert heat.exit_code == 0 and (out / "accuracy_grid_sr_pct3x3.png").is_file(), heat.output
    assert "size MiB" in pd.read_csv(out / "accuracy_grid_sr_pct3x3.csv").columns
    swapped = runner.invoke(app, ["plot", "--ledger", str(path), "--out-dir", str(out), "--x", "pct3x3"])
    assert swapped.exit_code == 0 and (out / "accuracy_vs_pct3x3_by_sr.png").is_file()
    bad = runner.invoke(app, ["plot", "--ledger", str(path), "--out-dir", str(out), "--x", "sr", "--hue", "sr"])
    assert bad.exit_code == 2 and "--x and --hue must differ" in bad.stderr


def test_cli_curves_from_histories(tmp_path):
    path = tmp_path / "l.csv"
    rid = add(path, param="sr", value="0.125")
    run_dir = tmp_path / rid
    run_dir.mkdir()
    with open(run_dir / "history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc"])
        w.writerows([[1, 2.0, 0.3, 2.1, 0.25], [2, 1.5, 0.5, 1.7, 0.45]])
    result = runner.invoke(app, ["plot", "--kind", "curves", rid[:6], "--ledger", str(path), "--out-dir", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    hist = pd.read_csv(run_dir / "history.csv")
    drawn = P.curves_figure(P.find_histories(L.read(path).frame(), [rid], [tmp_path]))
    assert list(drawn.figure.axes[0].lines[1].get_ydata()) == pytest.approx((hist["val_acc"] * 100).tolist())
    written = pd.read_csv(tmp_path / "f" / f"curves_{rid[:6]}.csv")
    assert written["val_acc"].tolist() == hist["val_acc"].tolist() and written["epoch"].tolist() == [1, 2]
    missing = runner.invoke(app, ["plot", "--kind", "curves", "ffffff", "--ledger", str(path)])
    assert missing.exit_code == 2 and "is not in the ledger" in missing.stderr


@pytest.mark.parametrize("build, message", [
    (lambda p: None, "nothing to plot"),
    (lambda p: add(p, overrides={"sr": "0.5"}, param="sr", value="0.5"), "nothing to plot"),
])
def test_nothing_to_plot_says_so(tmp_path, build, message):
    path = tmp_path / "l.csv"
    path.write_text(",".join(L.COLUMNS) + "\n")
    build(path)
    result = runner.invoke(app, ["plot", "--ledger", str(path), "--out-dir", str(tmp_path / "f")])
    assert result.exit_code == 1 and message in result.stderr
    single = runner.invoke(app, ["plot", "--ledger", str(path), "--param", "sr", "--out-dir", str(tmp_path / "f")])
    assert single.exit_code == 1 and "nothing to plot" in single.stderr
    heat = runner.invoke(app, ["plot", "--kind", "heatmap", "--ledger", str(path), "--out-dir", str(tmp_path / "f")])
    assert heat.exit_code == 1 and "two or more parameters" in heat.stderr


def test_a_sweep_includes_its_run_recorded_by_another_sweep(tmp_path):
    path = tmp_path / "l.csv"
    add(path, overrides={"sr": "0.125"}, param="sr", value="0.125", acc=0.80)  # also pct3x3=0.5
    add(path, overrides={"sr": "0.25"}, param="sr", value="0.25", acc=0.82)
    add(path, overrides={"pct3x3": "0.25"}, param="pct3x3", value="0.25", acc=0.78)
    add(path, overrides={"pct3x3": "0.75", "freq": 2}, param="pct3x3", value="0.75", acc=0.9)  # another experiment
    drawn = P.sweep_figure(L.read(path).frame(), "pct3x3")
    lines = mean_lines(drawn.figure.axes[0])
    assert len(lines) == 2  # the freq=2 sweep is its own line, never pooled with the others
    assert list(lines[0][0]) == [25.0, 50.0] and list(lines[0][1]) == pytest.approx([78.0, 80.0])
    assert list(lines[1][0]) == [75.0] and list(lines[1][1]) == pytest.approx([90.0])
    assert drawn.table["experiment"].tolist() == ["cifar", "cifar", "cifar (freq=2)"]


def test_report_numbers_equal_pandas_groupby(tmp_path):
    path = tmp_path / "l.csv"
    for seed, acc in enumerate((0.88, 0.89)):
        add(path, preset="alexnet_cifar", seed=seed, acc=acc)
    for seed, acc in enumerate((0.87, 0.90, 0.86)):
        add(path, preset="cifar", seed=seed, acc=acc)
    add(path, preset="cifar", overrides={"freq": 2, "bypass": "complex"}, acc=0.85)
    add(path, preset="cifar", seed=9, status="failed")
    result = runner.invoke(app, ["report", "--ledger", str(path), "--csv"])
    table = pd.read_csv(io.StringIO(result.stdout))
    df = L.read(path).frame()
    done = df[(df["status"] == "done") & (df["bypass"].fillna("none") == "none")]  # the plain variants
    by = done.groupby("preset")["best_val_acc"]
    cifar = table[table["model"] == "cifar"].iloc[0]
    assert cifar["acc mean (fraction)"] == pytest.approx(by.get_group("cifar").mean())
    assert cifar["acc sd (fraction)"] == pytest.approx(by.get_group("cifar").std())
    assert cifar["runs"] == 3 and table["runs"].sum() == 6
    assert cifar["size / alexnet_cifar"] == pytest.approx(1_096_398 / 8_981_578)
    assert cifar["size MB"] == pytest.approx(1_096_398 * 4 / 1e6)
    assert "cifar (freq=2, bypass=complex)" in table["model"].tolist()
    assert set(table["recipe"]) == {"study"} and set(table["train images"]) == {2000}
    md = runner.invoke(app, ["report", "--ledger", str(path), "--markdown"]).stdout
    assert md.splitlines()[0].startswith("| model | data | train images | recipe | epochs | size MB |")
    assert "| cifar | synthetic | 2,000 | study | 100 | 4.39 |" in md and "8.2x smaller |" in md
    larger = runner.invoke(app, ["report", "--ledger", str(path), "--baseline", "cifar"]).stdout
    assert "8.2x larger" in larger and "x smaller" not in larger.split("alexnet_cifar")[1].splitlines()[0]
    assert "same size" in larger
    missing = runner.invoke(app, ["report", "--ledger", str(path), "--baseline", "squeezenet1_0"])
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "--baseline 'squeezenet1_0' has no done run in the ledger" in missing.stderr
    from fireablate.results import report_table  # the Python API: the same table, baseline second

    api = report_table(df, "alexnet_cifar")
    assert api["size / alexnet_cifar"].tolist() == pytest.approx(table["size / alexnet_cifar"].tolist())
    empty = tmp_path / "e.csv"
    empty.write_text(",".join(L.COLUMNS) + "\n")
    nothing = runner.invoke(app, ["report", "--ledger", str(empty)])
    assert nothing.exit_code == 1 and "nothing to report" in nothing.stderr


def _figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_save_replaces_its_own_figures_but_no_one_elses(tmp_path, fmt):
    """Protects plots.save's overwrite check: figures fireablate wrote are redrawn in place; any
    other file at that name (a hand-made figure, or ours edited since) is refused and kept."""
    path = tmp_path / f"fig.{fmt}"
    P.save(_figure(), path)
    P.save(_figure(), path)  # its own, unchanged: replaced
    other = tmp_path / f"mine.{fmt}"
    other.write_bytes(b"made by hand")
    with pytest.raises(UsageError, match=f"mine.{fmt} exists and fireablate did not write it.*--overwrite"):
        P.save(_figure(), other)
    assert other.read_bytes() == b"made by hand"
    with open(path, "ab") as fh:
        fh.write(b" ")  # an edit after fireablate drew it: now somebody's work
    edited = path.read_bytes()
    with pytest.raises(UsageError, match="or it was changed since"):
        P.save(_figure(), path)
    assert path.read_bytes() == edited
    P.save(_figure(), other, overwrite=True)  # replaced on request, and ours from then on
    P.save(_figure(), other)
    assert other.read_bytes() != b"made by hand"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [f"fig.{fmt}", f"mine.{fmt}"]


def test_save_with_a_damaged_record_refuses_rather_than_guesses(tmp_path):
    """A record of written figures that cannot be read vouches for nothing: existing files are kept."""
    path = tmp_path / "fig.png"
    P.save(_figure(), path)
    (tmp_path / P.WRITTEN_RECORD).write_bytes(b"\x00\xff not json")
    with pytest.raises(UsageError, match="fireablate did not write it"):
        P.save(_figure(), path)
    P.save(_figure(), tmp_path / "new.png")  # a new file needs no record, and the record is whole again
    assert "new.png" in json.loads((tmp_path / P.WRITTEN_RECORD).read_text())


def _visible(folder, but):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != but and not p.name.startswith(".")}


def test_cli_plot_refuses_a_file_it_did_not_write_in_one_line(sr_ledger, tmp_path):
    """The same check through the command, for the figure and for the CSV of its points beside it:
    one line, exit 2, nothing written; --overwrite replaces them, and they are ours from then on."""
    out = tmp_path / "figs"
    out.mkdir()
    for name in ("accuracy_vs_sr.png", "accuracy_vs_sr.csv"):
        (out / name).write_bytes(b"from another tool")
        others = _visible(out, but=name)
        refused = runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out)])
        line = one_line_error(refused, 2)
        assert str(out / name) in line and "--overwrite" in line
        assert (out / name).read_bytes() == b"from another tool"
        assert _visible(out, but=name) == others  # nor the other one written
        forced = runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out), "--overwrite"])
        assert forced.exit_code == 0, forced.output
    assert matplotlib.image.imread(out / "accuracy_vs_sr.png").shape[2] in (3, 4)
    assert pd.read_csv(out / "accuracy_vs_sr.csv").shape[0] == 3  # one row per SR value
    again = runner.invoke(app, ["plot", "--ledger", str(sr_ledger), "--out-dir", str(out)])
    assert again.exit_code == 0 and f"wrote {out / 'accuracy_vs_sr.png'}" in again.stdout


@pytest.mark.parametrize("content", [b"", b"a,b\n1,2\n", bytes(range(256)) * 8], ids=["empty", "other-columns", "binary"])
def test_a_damaged_history_is_one_line(tmp_path, content):
    """Protects 'damaged files are one line' for plot --kind curves: a run's history.csv that is
    empty, of other columns or binary."""
    path = tmp_path / "l.csv"
    rid = add(path, param="sr", value="0.125")
    (tmp_path / rid).mkdir()
    (tmp_path / rid / "history.csv").write_bytes(content)
    result = runner.invoke(app, ["plot", "--kind", "curves", rid, "--ledger", str(path), "--out-dir", str(tmp_path / "f")])
    assert "history.csv" in one_line_error(result, 1)
