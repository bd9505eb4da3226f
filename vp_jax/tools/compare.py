"""Compare training runs: ``python -m vp_jax.tools.compare DIR [DIR ...] [--out PATH]``.

Each DIR is a training workdir holding ``config.json`` (written by
:func:`vp_jax.config.save_config_json`) and ``metrics.csv``.  Prints one table row per run —
run name, best validation PSNR and its epoch, the other validation measures of that epoch
(PSNR on moving pixels, action sensitivity, posterior reconstruction PSNR, copy-last PSNR;
when the run recorded them), final loss, last epoch — followed by one column
per config setting that differs between the runs (nested keys flattened, e.g.
``train.kl.schedule``), and writes one plot overlaying the validation PSNR curves
(``compare_val_psnr.png`` in the current folder unless ``--out`` is given).

Then the evaluations the runs hold (``DIR/eval/<name>/metrics.json``, written by eval.py): one
table per evaluation protocol (:mod:`vp_jax.evaluation.protocols`), so numbers measured under different
protocols (context, horizon, samples, how the best is chosen, FVD settings, split, number of
sequences) never share a column; each table is headed by its protocol, and when there are
several, by the settings that set it apart. Evaluations without a protocol card form a table of
their own.

A missing or unreadable DIR ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import pandas as pd

from vp_jax.config import flat_fields, load_config_json
from vp_jax.errors import DataError, cli_main
from vp_jax.evaluation import protocols
from vp_jax.report.visualize import plt, read_metrics_csv, save_fig

DEFAULT_OUT = "compare_val_psnr.png"
# metrics.csv column -> table column, read at the best validation epoch.
BEST_EPOCH_COLUMNS = {
    "val_psnr_moving": "psnr_moving",
    "val_action_sensitivity_db": "action_sens_db",
    "val_posterior_psnr": "posterior_psnr",
    "val_copy_psnr": "copy_last_psnr",
    "val_kl": "kl",
    "val_active_units": "active_units",
    "val_best_minus_mean_moving_db": "best_minus_mean_moving_db",
    "val_latent_share": "latent_share",
}


def load_run(workdir: str) -> dict:
    """Read one workdir: ``{'name', 'path', 'config' (flat dict), 'metrics' (DataFrame)}``."""
    if not os.path.isdir(workdir):
        raise DataError(f"{workdir}: not a directory (expected a training workdir)")
    raw = load_config_json(os.path.join(workdir, "config.json")).to_dict()
    df = read_metrics_csv(os.path.join(workdir, "metrics.csv"))
    if "epoch" not in df.columns:
        raise DataError(f"{workdir}/metrics.csv: expected an 'epoch' column, got {list(df.columns)}")
    name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
    return {"name": name, "path": workdir, "config": flat_fields(raw), "metrics": df}


def _unique_names(runs: list[dict]) -> None:
    names = [r["name"] for r in runs]
    for r in runs:
        if names.count(r["name"]) > 1:
            r["name"] = os.path.normpath(r["path"])


def _same(a, b) -> bool:
    """Equal config values: numbers compare numerically (1 == 1.0, NaN == NaN), bools only to
    bools, everything else by its JSON text."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def differing_settings(configs: list[dict]) -> list[str]:
    """Flat keys whose value differs between the configs (or is missing from some), sorted."""
    keys = sorted(set().union(*configs)) if configs else []
    missing = object()
    out = []
    for k in keys:
        vals = [c.get(k, missing) for c in configs]
        first = vals[0]
        if any(v is missing for v in vals) or not all(_same(first, v) for v in vals[1:]):
            out.append(k)
    return out


def summarize(runs: list[dict]) -> pd.DataFrame:
    """One row per run: best val PSNR (+ epoch) and that epoch's other validation measures,
    final loss, last epoch, differing settings."""
    diff = differing_settings([r["config"] for r in runs])
    rows = []
    for r in runs:
        df = r["metrics"]
        row = {"run": r["name"]}
        val = df[["epoch", "val_psnr"]].dropna() if "val_psnr" in df.columns else pd.DataFrame()
        if len(val):
            i = val["val_psnr"].idxmax()
            row["best_val_psnr"] = float(val.loc[i, "val_psnr"])
            row["best_epoch"] = int(val.loc[i, "epoch"])
        else:
            i = None
            row["best_val_psnr"] = float("nan")
            row["best_epoch"] = pd.NA
        for col, name in BEST_EPOCH_COLUMNS.items():
            row[name] = float(df.loc[i, col]) if i is not None and col in df.columns else float("nan")
        loss = df["loss"].dropna() if "loss" in df.columns else pd.Series(dtype=float)
        row["final_loss"] = float(loss.iloc[-1]) if len(loss) else float("nan")
        row["epochs"] = int(df["epoch"].max()) if df["epoch"].notna().any() else pd.NA
        for k in diff:
            v = r["config"].get(k, "<missing>")
            row[k] = str(v) if isinstance(v, tuple) else v
        rows.append(row)
    table = pd.DataFrame(rows)
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    table["epochs"] = table["epochs"].astype("Int64")
    return table


#: The panels of the overlay plot: metrics.csv column, y label, whether the y axis is logarithmic.
PLOT_PANELS = (("val_psnr", "validation PSNR (dB)", False), ("kl", "KL per frame (nats)", True),
               ("val_best_minus_mean_moving_db", "best of N - mean of N, moving pixels (dB)", False))


def plot_val_psnr(runs: list[dict], path: str) -> str:
    """Overlay the runs' curves per epoch into one PNG: validation PSNR, the training KL and, when
    some run recorded it, the validation best-of-N gain (:data:`PLOT_PANELS`)."""
    panels = [p for p in PLOT_PANELS if p[0] == "val_psnr" or any(p[0] in r["metrics"].columns for r in runs)]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (col, label, log) in zip(axes[0], panels):
        any_curve = False
        for r in runs:
            df = r["metrics"]
            d = df[["epoch", col]].dropna() if col in df.columns else pd.DataFrame()
            if len(d):
                any_curve = True
                best = f" (best {d[col].max():.2f})" if col == "val_psnr" else ""
                ax.plot(d["epoch"], d[col], marker="." if len(d) < 60 else None, label=f"{r['name']}{best}")
        if any_curve:
            ax.legend(loc="best", fontsize=8)
            if log and all(d > 0 for r in runs if col in r["metrics"].columns for d in r["metrics"][col].dropna()):
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, f"no {col} in any run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_title(label.split(" (")[0])
    return save_fig(fig, path)


def compare(workdirs: list[str], out: str = DEFAULT_OUT) -> pd.DataFrame:
    """Load the runs, return the summary table and write the overlay plot to ``out``."""
    runs = [load_run(w) for w in workdirs]
    _unique_names(runs)
    table = summarize(runs)
    plot_val_psnr(runs, out)
    return table


def load_evaluations(run: dict) -> list[dict]:
    """Every ``DIR/eval/<name>/metrics.json`` of a run: ``{'run', 'eval', 'card', 'metrics'}``
    (``card`` None when the file has no protocol card)."""
    root = os.path.join(run["path"], "eval")
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name, "metrics.json")
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                metrics = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: not a readable metrics.json ({err})") from None
        out.append({"run": run["name"], "eval": name, "card": metrics.get("protocol"), "metrics": metrics})
    return out


def _eval_row(e: dict) -> dict:
    m = e["metrics"]
    row = {"run": e["run"], "eval": e["eval"], "psnr": m.get("psnr"), "ssim": m.get("ssim")}
    lpips_keys = sorted(k for k in m if k.startswith("lpips_") and not k.endswith("_per_frame"))
    row.update({k: m[k] for k in lpips_keys})
    best = m.get("best_of_n") or {}
    for k in ("psnr", "ssim", *lpips_keys):
        if k in best:
            row[f"best_{k}"] = best[k]
    if "fvd" in m:
        row["fvd"], row["fvd_std"] = m["fvd"]["mean"], m["fvd"]["std"]
    row["copy_last_psnr"] = (m.get("baseline_copy_last") or {}).get("psnr")
    return row


def evaluation_tables(evals: list[dict]) -> list[tuple[str, pd.DataFrame]]:
    """``[(heading, table)]``: one table per protocol signature, in order of first appearance.
    The heading describes the protocol and, when there are several, what sets it apart."""
    groups: dict[tuple, list[dict]] = {}
    for e in evals:
        groups.setdefault(protocols.signature(e["card"]), []).append(e)
    cards = [g[0]["card"] for g in groups.values()]
    out = []
    for i, group in enumerate(groups.values()):
        heading = "protocol " + protocols.describe(group[0]["card"])
        if len(groups) > 1 and group[0]["card"] is not None:
            differ = protocols.differing_fields([cards[i], *(c for j, c in enumerate(cards) if j != i)])
            heading += f"  [differs from the other tables in: {', '.join(differ)}]"
        out.append((heading, pd.DataFrame([_eval_row(e) for e in group]).dropna(axis=1, how="all")))
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vp_jax.tools.compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="training workdirs (config.json + metrics.csv)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"validation PSNR overlay plot (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    table = compare(args.dirs, args.out)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}",
                              formatters={k: (lambda v: f"{v:.3f}") for k in ("best_val_psnr", *BEST_EPOCH_COLUMNS.values())}))
    print(f"plot: {args.out}")
    runs = [load_run(w) for w in args.dirs]
    _unique_names(runs)
    tables = evaluation_tables([e for r in runs for e in load_evaluations(r)])
    if tables:
        print(f"\nevaluations: {len(tables)} protocol(s)"
              + ("; numbers in different tables are not comparable" if len(tables) > 1 else ""))
    for heading, table in tables:
        print("\n" + heading)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
