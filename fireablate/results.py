"""Ledger rows grouped into variants: the numbers behind ``runs``, ``report`` and the figures.

A variant is everything that defines an experiment except its seed: network, data, recipe.
Grouping on all of those keeps two sweeps that share a preset name but differ in overrides apart.
"""

from __future__ import annotations

import pandas as pd

from .ledger import SPEC_COLUMNS

VARIANT_COLUMNS = ["preset", *SPEC_COLUMNS, "data_identity", "n_train", "recipe", "augment", "batch_size",
                   "lr", "weight_decay", "max_epochs"]


def _numeric_first(values: pd.Series) -> pd.Series:
    """Sort key: numbers by value, then text."""
    as_num = pd.to_numeric(values, errors="coerce")
    return as_num.fillna(float("inf"))


def group_runs(df: pd.DataFrame, param: str | None = None, status: str | None = None) -> pd.DataFrame:
    """One row per variant: runs, seeds, best val accuracy mean and sd (done runs), size, statuses."""
    if status is not None:
        df = df[df["status"] == status]
    if param is not None:
        df = df[df["sweep_param"] == param]
    if df.empty:
        return pd.DataFrame(columns=["preset", "value", "runs", "done", "acc mean", "acc sd", "MiB", "params", "epochs", "status"])
    keys = df[VARIANT_COLUMNS].astype(str)
    df = df.assign(_key=keys.apply(lambda r: "|".join(r), axis=1))
    rows = []
    for _, g in df.groupby("_key", sort=False):
        done = g[g["status"] == "done"]
        first = g.iloc[0]
        value = first["sweep_value"] if param is not None else (f"{first['sweep_param']}={first['sweep_value']}" if first["sweep_param"] else "")
        rows.append({
            "preset": first["preset"],
            "value": value,
            "runs": len(g),
            "done": len(done),
            "acc mean": done["best_val_acc"].mean() if len(done) else float("nan"),
            "acc sd": done["best_val_acc"].std(ddof=1) if len(done) > 1 else float("nan"),
            "MiB": first["mib"],
            "params": first["params"],
            "epochs": done["epochs"].mean() if len(done) else float("nan"),
            "status": ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().items()),
        })
    out = pd.DataFrame(rows)
    if param is not None:
        out = out.sort_values("value", key=_numeric_first, kind="stable").reset_index(drop=True)
    return out
