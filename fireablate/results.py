"""Ledger rows grouped into variants and experiments: the numbers behind ``runs``, ``report`` and
the figures.

A *variant* is everything that defines a run except its seed (``VARIANT_COLUMNS``): network,
data, recipe. Runs of one variant are seeds of it, and only they are ever pooled. An *experiment*
is what a sweep holds fixed: the variant without the swept parameters. One line of a figure is one
experiment; two experiments over one parameter in one ledger (the same SR sweep on synthetic and
on real images, say) are drawn as two lines, labelled by what differs between them, and never
averaged together.

Accuracies are fractions here and in every file (the ledger, ``--csv``, ``--json``, the CSV beside
a figure), with "(fraction)" in their column names; people see them as percent (``format_cell``,
``display_header``). Sizes are float32 parameter bytes in MB (10^6 bytes, the study's unit) or
MiB (2^20 bytes, the SqueezeNet paper's), and the unit is in the column name.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from .config import CONFIG_IDENTITY_COLUMNS, RECIPES
from .errors import FireablateError, UsageError
from .ledger import SPEC_COLUMNS
from .params import SIZE_UNITS
from .params import size_in as params_size_in
from .presets import PRESETS
from .spec import SPEC_OPTIONS, spec_cells

# What a model is: its network (the preset and every option) and, for a compressed model, its
# compression settings (one canonical text, blank for a trained model). Labels name these.
MODEL_COLUMNS = ["preset", *SPEC_COLUMNS, "compression"]
# Everything that defines a run except its seed, derived from the option declarations: runs that
# agree on all of these are seeds of one experiment, and only they are ever pooled. Two
# compressions of one model that differ only in their settings are two variants.
VARIANT_COLUMNS = [*MODEL_COLUMNS, "data_identity", "n_train", *(c for c in CONFIG_IDENTITY_COLUMNS if c != "seed")]
# The training half of a variant: the data and how it was trained.
SETUP_COLUMNS = [c for c in VARIANT_COLUMNS if c not in MODEL_COLUMNS]

ACC_MEAN = "acc mean (fraction)"
ACC_SD = "acc sd (fraction)"

# The columns that say where a group's numbers come from, as people read them.
SETUP_DISPLAY = {"data": "data", "n_train": "train images", "recipe": "recipe", "max_epochs": "epochs"}


# ---------------------------------------------------------------------------------------------
# Cells, sizes and values


def size_column(unit: str) -> str:
    if unit not in SIZE_UNITS:
        raise UsageError(f"--size-unit must be MB (10^6 bytes) or MiB (2^20 bytes), got {unit!r}")
    return f"size {unit}"


def size_in(params, unit: str):
    """Float32 parameter bytes in ``unit`` (a number or a Series of parameter counts)."""
    size_column(unit)
    return params_size_in(params, unit)


def compressed(rows: pd.DataFrame) -> pd.Series:
    """Per run, whether it is a compressed model (its ledger row names its compression)."""
    return rows["compression"].map(lambda v: not _blank(v))


def model_size(rows: pd.DataFrame, unit: str) -> pd.Series:
    """What each run's model takes stored, in ``unit``: its float32 parameters, or for a compressed
    model its file (the ledger's ``mib``), since a parameter count sees neither the bits per weight
    nor the indices, codebooks and header: 6 and 8 bits have the same parameters."""
    float32 = size_in(pd.to_numeric(rows["params"], errors="coerce"), unit)
    on_disk = pd.to_numeric(rows["mib"], errors="coerce") * SIZE_UNITS["MiB"] / SIZE_UNITS[unit]
    return float32.where(~compressed(rows), on_disk)


def size_basis(rows: pd.DataFrame) -> str:
    """What the sizes of ``rows`` count, for a caption or an axis label."""
    return "float32 parameters, compressed models' files" if compressed(rows).any() else "float32 parameters"


# Which epoch's accuracy a run reports. The study used EarlyStopping without restoring the best
# weights, so its models are the last epoch's: "final" for recipes that stop early, as it did;
# "best" (the best epoch, chosen on the validation split) otherwise. The ledger holds both.
METRICS = ("auto", "best", "final")
ACC = "acc"  # the column every table and figure reads, set by with_metric


def with_metric(df: pd.DataFrame, metric: str = "auto") -> tuple[pd.DataFrame, str]:
    """``df`` with the accuracy column chosen by ``metric``, and a phrase saying which it is."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "auto":
        stops = df["recipe"].map(lambda r: r in RECIPES and RECIPES[r].early_stop is not None)
        # A row without a final accuracy (hand-made, or from an older version) shows its best.
        acc = df["final_val_acc"].where(stops & df["final_val_acc"].notna(), df["best_val_acc"])
        phrase = ("accuracy: the final epoch for recipes that stop early (as the study reported), "
                  "the best epoch otherwise (--metric)")
    else:
        acc = df[f"{metric}_val_acc"]
        phrase = f"accuracy: the {metric} epoch (--metric)"
    return df.assign(**{ACC: acc}), phrase


def _measured(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the accuracy column, chosen automatically where the caller did not choose."""
    return df if ACC in df.columns else with_metric(df)[0]


def _blank(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v == ""


def _text(v) -> str:
    """A cell as text for keys: 128.0 and '128' agree, a blank is ''."""
    if _blank(v):
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else format(v, ".12g")
    return str(v)


def _show(v) -> str:
    """A cell as people read it: 0.5, 128, 'complex'."""
    if isinstance(v, float) and not _blank(v):
        return str(int(v)) if v.is_integer() else format(v, "g")
    return _text(v)


def data_name(source: str) -> str:
    """'cifar10', 'synthetic', or an image folder's name (its full path stays in files)."""
    text = _text(source)
    return Path(text).name or text if "/" in text else text


def swept(sweep_param) -> list[str]:
    """The parameters a ledger row's sweep varied: 'sr,pct3x3' -> ['sr', 'pct3x3']."""
    return [p for p in _text(sweep_param).split(",") if p]


def is_numeric(param: str) -> bool:
    """Whether a parameter's values lie on a number line (by its declared type), so a figure
    joins them by lines; preset, bypass, padding, pool_after and the like are categories."""
    spec = SPEC_OPTIONS.get(param)
    return spec is not None and spec[0].kind in (int, float) and not spec[0].choices


def value_order(param: str, values) -> list:
    """A parameter's values in the order people expect: numbers ascending, presets and choices as
    declared, anything else as first seen."""
    seen = list(dict.fromkeys(v for v in values if not _blank(v)))
    if is_numeric(param):
        return sorted(seen, key=float)
    declared = list(PRESETS) if param == "preset" else list(SPEC_OPTIONS[param][0].choices) if param in SPEC_OPTIONS else []
    rank = {name: i for i, name in enumerate(declared)}
    return sorted(seen, key=lambda v: rank.get(_text(v), len(rank)))  # stable: unknown ones as first seen


def show_value(param: str, v, percent: bool = False) -> str:
    """A swept value for a label: 'sr=0.5'; pct3x3 in percent where the figure is."""
    if percent and param == "pct3x3" and not _blank(v):
        return f"{float(v) * 100:g}%"
    return _show(v)


def done_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The done runs, each once: a run trained again with --force has a second row under its id,
    and the latest counts, so a seed is never counted twice."""
    df = _measured(df)
    d = df[df["status"] == "done"]
    return d.drop_duplicates("run_id", keep="last")


def short_ids(ids) -> dict[str, str]:
    """Each run id shortened to the fewest characters (at least 8) that keep all of them apart, so
    a shortened id works as ``plot --kind curves ID``."""
    ids = list(dict.fromkeys(_text(i) for i in ids if _text(i)))
    n = 8
    while n < 12 and len({i[:n] for i in ids}) < len(ids):
        n += 1
    return {i: i[:n] for i in ids}


# ---------------------------------------------------------------------------------------------
# Variants and experiments


def _differs(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) > 1e-12
    except (TypeError, ValueError):
        return _text(a) != _text(b)


def _spec_diffs(row: pd.Series, exclude=()) -> list[str]:
    """How a run's network differs from its preset, as ['sr=0.5', 'freq=2'].

    A blank cell (a ledger written before that option existed) is no evidence of a difference.
    A preset this fireablate does not know is described by every cell.
    """
    preset = PRESETS.get(_text(row["preset"]))
    base = spec_cells(preset) if preset is not None else {}
    diffs = []
    for col in SPEC_COLUMNS:
        if col == "network" or col in exclude or col not in row.index or _blank(row[col]):
            continue
        if preset is None or (col in base and _differs(row[col], base[col])):
            diffs.append(f"{col}={_show(row[col])}")
    return diffs


def _compression_parts(row: pd.Series) -> list[str]:
    """A compressed model's settings, one per part: ['density paper', '6 bits', 'Huffman', ...];
    [] for a trained model. compress.compression_text joins its parts with ', ' (and the items of
    a per-layer option with ',' alone)."""
    text = _text(row["compression"]) if "compression" in row.index else ""
    return text.split(", ") if text else []


def _compressed_phrase(parts: list[str]) -> str:
    return f"compressed: {', '.join(parts)}" if parts else "compressed"


def _model_diffs(row: pd.Series, exclude=()) -> list[str]:
    """How a run's model differs from its preset: its network's differences, then, for a
    compressed model, 'compressed: ' and its settings."""
    parts = _compression_parts(row)
    return _spec_diffs(row, exclude) + ([_compressed_phrase(parts)] if parts else [])


def variant_label(row: pd.Series, exclude=()) -> str:
    """The preset's name plus what differs from it, e.g. 'cifar (sr=0.5, freq=2)' or
    'cifar (compressed: density paper, 6 bits, Huffman, retrain 1, finetune 1)'."""
    diffs = _model_diffs(row, exclude)
    return f"{row['preset']} ({', '.join(diffs)})" if diffs else str(row["preset"])


def short_labels(models: pd.DataFrame) -> tuple[list[str], str]:
    """Labels for models drawn side by side, without what all models of a preset share.

    Returns a label per row ('cifar (sr=0.5)') and what was left out, for a caption ('every
    cifar: base_e=16, n_fire=3'): a figure's labels then say only what tells its points apart.
    Compressed models of a preset are told apart by the settings they do not share ('cifar
    (compressed: 6 bits)'; 'every compressed cifar: density paper, Huffman, ...').
    """
    rows = [r for _, r in models.iterrows()]
    presets = [_text(r["preset"]) for r in rows]
    spec, comp = [_spec_diffs(r) for r in rows], [_compression_parts(r) for r in rows]

    def shared_by(lists: list[list[str]], preset: str, compressed_only: bool = False) -> list[str]:
        """What every model of ``preset`` has (every compressed one: among compressed models)."""
        mine = [d for d, p in zip(lists, presets) if p == preset and (d or not compressed_only)]
        return [d for d in mine[0] if all(d in other for other in mine[1:])] if len(mine) > 1 else []

    shared = {p: shared_by(spec, p) for p in dict.fromkeys(presets)}
    shared_comp = {p: shared_by(comp, p, compressed_only=True) for p in dict.fromkeys(presets)}
    labels = []
    for d, c, preset in zip(spec, comp, presets):
        rest = [x for x in d if x not in shared[preset]]
        if c:
            rest.append(_compressed_phrase([x for x in c if x not in shared_comp[preset]]))
        labels.append(f"{preset} ({', '.join(rest)})" if rest else preset)
    caption = "; ".join([*(f"every {p}: {', '.join(c)}" for p, c in shared.items() if c),
                         *(f"every compressed {p}: {', '.join(c)}" for p, c in shared_comp.items() if c)])
    return labels, caption


def _joined(frame: pd.DataFrame) -> pd.Series:
    return frame.apply(lambda r: "|".join(_text(v) for v in r), axis=1) if len(frame) else pd.Series(dtype=str)


def variant_keys(df: pd.DataFrame) -> pd.Series:
    return _joined(df[VARIANT_COLUMNS])


def experiment_keys(df: pd.DataFrame, params: list[str]) -> pd.Series:
    """Per run, its experiment in a sweep over ``params``: its variant without them.

    In a sweep over presets the network comes from each preset, so what the sweep held fixed is
    the overrides applied to every preset (a run's differences from its own preset).
    """
    if df.empty:
        return pd.Series(dtype=str)
    if "preset" in params:
        network = df.apply(lambda r: ", ".join(_model_diffs(r, exclude=params)), axis=1)
    else:
        network = _joined(df[[c for c in MODEL_COLUMNS if c not in params]])
    return network + "||" + _joined(df[SETUP_COLUMNS])


@dataclass(frozen=True)
class Described:
    """Labels for a set of experiments: what tells each apart, and what they share."""

    labels: dict[str, str]  # experiment key -> label ('' when there is one experiment)
    separated_by: list[str]  # the settings that differ between them
    common: str  # what they share, for a caption: 'cifar10-jpeg, 2,000 training images; recipe fast; 4 epochs'


def describe(reps: pd.DataFrame, params: Sequence[str] = (), network: bool = True) -> Described:
    """Labels for experiments from one representative run each (index: experiment key).

    ``params``: the swept parameters, which are not part of an experiment. ``network=False``
    describes the data and training settings only (experiments of a Pareto figure hold many
    networks each).
    """
    def differs(*cols: str) -> bool:
        return any(reps[c].map(_text).nunique() > 1 for c in cols if c in reps)

    parts: dict[str, list[str]] = {k: [] for k in reps.index}
    separated, common = [], []
    network_cols = [c for c in MODEL_COLUMNS if c not in params]
    if not network:
        pass
    elif "preset" in params:
        sig = reps.apply(lambda r: ", ".join(_model_diffs(r, exclude=params)), axis=1)
        if sig.nunique() > 1:
            separated.append("network overrides")
            for k in reps.index:
                parts[k].append(sig[k] or "preset defaults")
    elif differs(*network_cols):
        separated += [c for c in network_cols if differs(c)]
        for k, r in reps.iterrows():
            parts[k].append(variant_label(r, exclude=params))
    if not network and "compression" in reps and compressed(reps).nunique() > 1:
        # Setups of compressed models (a retraining's lr and epochs, the parent as init) and of
        # trained ones, in one figure: say which is which before the numbers.
        separated.append("compression")
        for k, is_compressed in compressed(reps).items():
            parts[k].append("compressed" if is_compressed else "trained")
    if differs("data", "n_train"):
        separated += [name for c, name in (("data", "data"), ("n_train", "train images")) if differs(c)]
        for k, r in reps.iterrows():
            parts[k].append(f"{data_name(r['data'])}, {_count(r['n_train'])} images")
    elif differs("data_identity"):
        separated.append("data content")
        for k, r in reps.iterrows():
            parts[k].append(f"data {_text(r['data_identity'])[:8]}")
    if not differs("data", "n_train"):
        r = reps.iloc[0]
        common.append(f"{data_name(r['data'])}, {_count(r['n_train'])} training image{'' if _count(r['n_train']) == '1' else 's'}")
    for col, name, fmt in (("recipe", "recipe", "recipe {}"), ("augment", "augment", "augment {}"),
                           ("lr", "lr", "lr {}"), ("weight_decay", "weight decay", "weight decay {}"),
                           ("batch_size", "batch size", "batch {}"), ("max_epochs", "epochs", "{} epochs"),
                           ("init", "init", "init {}")):
        if col not in reps:
            continue
        if differs(col) and (col not in _RECIPE_DEFAULTS or any(_overridden(r, col) for _, r in reps.iterrows())):
            separated.append(name)
            for k, r in reps.iterrows():
                if not _blank(r[col]):  # no 'init ' for a run trained from scratch
                    parts[k].append(_phrase(fmt, col, r[col]))
        elif col in ("recipe", "max_epochs") and not differs(col) and not _blank(reps[col].iloc[0]):
            common.append(_phrase(fmt, col, reps[col].iloc[0]))
    common_text = "; ".join(common)
    # One experiment is told by what it is (the CSV's experiment column is never blank).
    labels = {k: ", ".join(p) or common_text for k, p in parts.items()}
    # Every variant column is described above, so labels differ; should two still read alike
    # (an option shown identically at 12 digits), a number keeps them apart.
    seen: dict[str, int] = {}
    for k, label in labels.items():
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[k] = f"{label} #{seen[label]}"
    return Described(labels, separated, common_text)


# Ledger columns that a recipe may set (column -> Recipe field): they tell experiments apart only
# where a run set one by hand, since a different recipe is already said.
_RECIPE_DEFAULTS = {"augment": "augment", "lr": "lr", "weight_decay": "weight_decay", "batch_size": "batch_size"}


def _overridden(row: pd.Series, col: str) -> bool:
    """Whether a run's ``col`` differs from its recipe's own value (set with --lr, say); a value
    its recipe does not set is always the run's own."""
    recipe = RECIPES.get(_text(row["recipe"]))
    field_name = _RECIPE_DEFAULTS[col]
    return recipe is None or not hasattr(recipe, field_name) or _differs(row[col], getattr(recipe, field_name))


def _phrase(fmt: str, col: str, value) -> str:
    """'recipe fast', '4 epochs', '1 epoch', 'init 3f2a9c01'."""
    text = _show(value)[:8] if col == "init" else _show(value)
    return "1 epoch" if col == "max_epochs" and text == "1" else fmt.format(text)


def _count(v) -> str:
    return f"{int(v):,}" if not _blank(v) else "?"


def _int_column(values: pd.Series) -> pd.Series:
    """Counts as integers in every file, blank where unknown (never 4.0); the index is kept."""
    return pd.to_numeric(values, errors="coerce").round().astype("Int64")


def _setup_cells(row: pd.Series) -> dict:
    return {"data": _text(row["data"]), "train images": row["n_train"], "recipe": _text(row["recipe"]),
            "epochs": row["max_epochs"] if "max_epochs" in row.index else float("nan")}


def _stats(accs: pd.Series) -> dict:
    return {ACC_MEAN: accs.mean() if len(accs) else float("nan"),
            ACC_SD: accs.std(ddof=1) if len(accs) > 1 else float("nan"), "n": len(accs)}


# ---------------------------------------------------------------------------------------------
# Sweeps: what a figure draws


@dataclass
class SweepData:
    """The done runs of a sweep over ``params``, told apart into experiments, and their points."""

    params: list[str]
    runs: pd.DataFrame  # one row per done run drawn, with columns 'experiment' and '_key'
    points: pd.DataFrame  # one row per (experiment, values): the CSV beside a figure
    described: Described
    order: dict[str, list] = field(default_factory=dict)  # each parameter's values, in display order
    size_unit: str = "MB"

    @property
    def experiments(self) -> list[str]:
        return list(dict.fromkeys(self.runs["experiment"]))

    @property
    def seeds(self) -> str:
        n = self.points["n"]
        return f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"

    def caption(self) -> str:
        """One line for under a figure's title: data, images, recipe, epochs, seeds."""
        seeds = f"{self.seeds} seed{'s' if self.points['n'].max() > 1 else ''} per point"
        varies = f"{', '.join(self.described.separated_by)} per line" if self.described.separated_by else ""
        return "; ".join(p for p in (self.described.common, varies, seeds) if p)

    def notes(self) -> list[str]:
        """What was kept apart, for the command line to say."""
        if len(self.experiments) < 2:
            return []
        labels = "; ".join(repr(e) for e in self.experiments)
        return [f"{len(self.experiments)} experiments over {', '.join(self.params)} drawn apart (never averaged), "
                f"differing in {', '.join(self.described.separated_by)}: {labels}"]


def sweeps_in(df: pd.DataFrame) -> list[list[str]]:
    """The sweeps the ledger holds (their parameters, in the order recorded) with at least two
    points among done runs, in ledger order; a grid is one sweep whatever its parameters' order."""
    d = done_runs(df)
    found: dict[frozenset, list[str]] = {}
    points: dict[frozenset, set] = {}
    for p, v in zip(d["sweep_param"], d["sweep_value"]):
        params = swept(p)
        if params:
            found.setdefault(frozenset(params), params)
            points.setdefault(frozenset(params), set()).add(_text(v))
    return [params for key, params in found.items() if len(points[key]) >= 2]


def sweep_data(df: pd.DataFrame, params: list[str], size_unit: str = "MB") -> SweepData:
    """The done runs of the sweep over ``params``, grouped into experiments and points.

    A run that belongs to the sweep but was recorded by another one (sr=0.125 of an SR sweep is
    also pct3x3=0.5 of a 3x3 sweep, and the second sweep skips it as done) is found by its
    settings: it joins an experiment whose own runs agree with it on everything but ``params``.
    A run that matches no experiment of this sweep is not drawn.
    """
    df = _measured(df)
    size_col = size_column(size_unit)
    d = done_runs(df)
    want = set(params)
    own = d[d["sweep_param"].map(lambda p: set(swept(p)) == want)]
    if own.empty:
        raise FireablateError(f"nothing to plot: no done runs of a sweep over {', '.join(params)}")
    keys = experiment_keys(d, params)
    d = d.assign(_key=keys, _own=d.index.isin(own.index))
    d = d[d["_key"].isin(set(keys[own.index]))]
    d = d[~d[params].map(_blank).any(axis=1)]  # a run without a value of a swept parameter has no point
    # Experiments in the order their own runs first appear; runs found elsewhere join them.
    first = d[d["_own"]].drop_duplicates("_key")
    if first.empty:
        raise FireablateError(f"nothing to plot: no done run of the sweep over {', '.join(params)} records a value of it")
    reps = first.set_index("_key")
    described = describe(reps, params)
    d = d.assign(experiment=d["_key"].map(described.labels))
    order = {p: value_order(p, d[p]) for p in params}
    rows = []
    for key in reps.index:
        runs = d[d["_key"] == key]
        rep = reps.loc[key]
        for values, g in runs.groupby([runs[p].map(_text) for p in params], sort=False):
            values = values if isinstance(values, tuple) else (values,)
            typed = [g[p].iloc[0] for p in params]
            rows.append({
                "experiment": described.labels[key],
                **({"preset": rep["preset"]} if "preset" not in params else {}),
                **_setup_cells(rep),
                **dict(zip(params, typed)),
                **_stats(g[ACC]),
                size_col: model_size(g, size_unit).iloc[0],
                "params": g["params"].iloc[0],
                "run ids": " ".join(g["run_id"]),
            })
    points = pd.DataFrame(rows)
    rank = {p: {_text(v): i for i, v in enumerate(order[p])} for p in params}
    exp_rank = {label: i for i, label in enumerate(described.labels.values())}
    points = points.sort_values(
        by=["experiment", *params],
        key=lambda col: col.map(exp_rank) if col.name == "experiment" else col.map(lambda v: rank[col.name][_text(v)]),
        kind="stable").reset_index(drop=True)
    for col in ("train images", "epochs", "n", "params"):
        points[col] = _int_column(points[col])
    return SweepData(list(params), d, points, described, order, size_unit)


# ---------------------------------------------------------------------------------------------
# runs and report


def _best_status(g: pd.DataFrame) -> str:
    """Statuses of a group's runs, each run counted once by its best outcome (a run that failed
    and then finished is done)."""
    rank = {"failed": 0, "diverged": 1, "done": 2}
    best = g.assign(_r=g["status"].map(rank)).sort_values("_r").drop_duplicates("run_id", keep="last")
    return ", ".join(f"{n} {s}" for s, n in best["status"].value_counts().items())


def _sweep_label(g: pd.DataFrame) -> str:
    labels = dict.fromkeys(
        ", ".join(f"{p}={v}" for p, v in zip(swept(p), _text(v).split(","))) for p, v in zip(g["sweep_param"], g["sweep_value"]))
    return "; ".join(label for label in labels if label)


def group_runs(df: pd.DataFrame, param: str | None = None, status: str | None = None,
               size_unit: str = "MB") -> pd.DataFrame:
    """One row per variant: its model, data, recipe and epochs, runs, accuracy over the done ones'
    seeds (mean, sd), size, statuses and run ids.

    ``param`` ('sr', or 'sr,pct3x3' for a grid) keeps the runs of sweeps over it, with one column
    per parameter holding its value, sorted by experiment and value.
    """
    df = _measured(df)
    size_col = size_column(size_unit)
    if status is not None:
        df = df[df["status"] == status]
    params = swept(param) if param else []
    if params:
        df = df[df["sweep_param"].map(lambda p: set(params) <= set(swept(p)))]
    head = ["model", *(params or ["sweep"]), *SETUP_DISPLAY.values()]
    tail = ["runs", "done", ACC_MEAN, ACC_SD, size_col, "params", "status", "run ids"]
    if df.empty:
        return pd.DataFrame(columns=head + tail)
    df = df.assign(_key=variant_keys(df))
    rows = []
    for _, g in df.groupby("_key", sort=False):
        done = done_runs(g)
        first = g.iloc[-1] if done.empty else done.iloc[-1]
        rows.append({
            "model": variant_label(first),
            **({p: first[p] for p in params} if params else {"sweep": _sweep_label(g)}),
            **_setup_cells(first),
            "runs": g["run_id"].nunique(),
            "done": len(done),
            ACC_MEAN: done[ACC].mean() if len(done) else float("nan"),
            ACC_SD: done[ACC].std(ddof=1) if len(done) > 1 else float("nan"),
            size_col: model_size(first.to_frame().T, size_unit).iloc[0],
            "params": first["params"],
            "status": _best_status(g),
            "run ids": " ".join(dict.fromkeys(g["run_id"])),
            "slurm jobs": ",".join(j for j in dict.fromkeys(g["slurm_job_id"].map(_text)) if j),
            "_setup": "|".join(_text(first[c]) for c in SETUP_COLUMNS),
        })
    out = pd.DataFrame(rows)
    if params:
        setup_rank = {s: i for i, s in enumerate(dict.fromkeys(out["_setup"]))}
        ranks = {p: {_text(v): i for i, v in enumerate(value_order(p, out[p]))} for p in params}
        out = out.sort_values(["_setup", *params], kind="stable", key=lambda c: c.map(
            setup_rank if c.name == "_setup" else lambda v: ranks[c.name][_text(v)])).reset_index(drop=True)
    if not out["slurm jobs"].any():
        out = out.drop(columns="slurm jobs")  # only where runs ran on Slurm
    for col in ("train images", "epochs", "runs", "done", "params"):
        out[col] = _int_column(out[col])
    return out.drop(columns="_setup")


def report_table(df: pd.DataFrame, baseline: str | None = None, size_unit: str = "MB") -> pd.DataFrame:
    """Table I: one row per model variant with its data, recipe, epochs, size and accuracy (mean,
    sd, runs); the largest first within each experiment's setup. With ``baseline`` (a model as the
    table names it), sizes are compared with it as in ``compare_sizes``."""
    df = _measured(df)
    size_col = size_column(size_unit)
    d = done_runs(df)
    if d.empty:
        raise_empty()
    d = d.assign(_key=variant_keys(d))
    rows = []
    for _, g in d.groupby("_key", sort=False):
        first = g.iloc[0]
        rows.append({
            "model": variant_label(first),
            **_setup_cells(first),
            size_col: model_size(g, size_unit).iloc[0],
            "params": first["params"],
            ACC_MEAN: g[ACC].mean(),
            ACC_SD: g[ACC].std(ddof=1) if len(g) > 1 else float("nan"),
            "runs": len(g),
            "_setup": "|".join(_text(first[c]) for c in SETUP_COLUMNS),
        })
    table = pd.DataFrame(rows)
    setup_rank = {s: i for i, s in enumerate(dict.fromkeys(table["_setup"]))}
    table = table.assign(_s=table["_setup"].map(setup_rank), _size=-table[size_col])
    table = table.sort_values(["_s", "_size"], kind="stable").drop(columns=["_setup", "_s", "_size"])
    for col in ("train images", "epochs", "params", "runs"):
        table[col] = _int_column(table[col])
    table = table.reset_index(drop=True)
    return compare_sizes(table, baseline) if baseline is not None else table


def compare_sizes(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """``table`` with the column 'size / BASELINE': each model's size as a fraction of the
    baseline's (format_cell reads 0.12 as '8.2x smaller'). The baseline is a model of the table."""
    size_col = next(c for c in table.columns if c.startswith("size "))
    base = table[table["model"] == baseline]
    if base.empty:
        models = ", ".join(dict.fromkeys(table["model"]))
        raise UsageError(f"--baseline {baseline!r} has no done run in the ledger; models with done runs: {models}")
    return table.assign(**{f"size / {baseline}": table[size_col] / base[size_col].iloc[0]})


def raise_empty() -> None:
    raise FireablateError("nothing to report: the ledger has no done runs")


# ---------------------------------------------------------------------------------------------
# How tables read


def display_header(col: str) -> str:
    """A column's name as people read it: fractions are shown as percent, and the name says so;
    a size ratio reads as 'size vs BASELINE' (its cells say 'N x smaller')."""
    return col.replace("(fraction)", "(%)").replace("size / ", "size vs ")


def _ratio(v: float) -> str:
    if abs(v - 1) < 1e-9:
        return "same size"
    times = 1 / v if v < 1 else v
    shown = f"{times:.1f}" if times >= 1.95 else f"{times:.2f}"
    return f"{shown}x {'smaller' if v < 1 else 'larger'}"


def format_cell(col: str, v) -> str:
    """How a table cell reads, in the terminal and in Markdown alike (``runs`` and ``report``)."""
    if _blank(v):
        return ""
    if col == "data":
        return data_name(v)
    if col == "run ids":
        return str(v)
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return f"{v:,}" if col in ("params", "train images") else str(v)
    if isinstance(v, float):
        if col.startswith("size / "):
            return _ratio(v)
        if col.startswith("acc"):  # fractions in every table and file; percent for a reader
            return f"{v:.2%}"
        if col.startswith("size "):
            return f"{v:.2f}" if v >= 1 else f"{v:.3g}"
        if v.is_integer():
            return f"{int(v):,}" if col in ("params", "train images") else str(int(v))
        return f"{v:g}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    left = {"model", "data", "recipe", "sweep", "status", "run ids"}
    lines = ["| " + " | ".join(display_header(c) for c in cols) + " |",
             "|" + "|".join("---" if c in left else "---:" for c in cols) + "|"]
    for rec in table.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(c, v) for c, v in zip(cols, rec)) + " |")
    return "\n".join(lines) + "\n"
