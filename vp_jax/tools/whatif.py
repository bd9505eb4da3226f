"""What if the robot did something else? A trained model's predictions under edited actions.

    python -m vp_jax.tools.whatif --workdir runs/pushbot --sequence 3 --scale 0,0.5,1.5 --zero 1
    python -m vp_jax.tools.whatif --workdir runs/pushbot --sequence 3 --from-sequence 7 --actions my_actions.csv

Takes sequence K of a split, keeps its context frames, edits the actions of the steps that move
the robot into the predicted frames (action t, t >= n_past - 1, is the command for the move from
frame t to t+1; earlier actions made the context frames and are kept), lets the model predict
under each edit, and writes ``WORKDIR/whatif/<split>-<K>/`` (``--out`` elsewhere):

* ``whatif.png``: one row per video, time left to right: the ground truth on top, the unedited
  prediction, then each edit's prediction (and, on pushbot, the true counterfactual under it);
  context frames framed green, predicted frames red;
* ``whatif.gif``: the same rows animated, prediction beside truth;
* ``whatif.json``: per edit, the PSNR of the prediction against the ground truth and its mean
  pixel change relative to the unedited prediction (on pushbot also the PSNR against the true
  counterfactual); ``whatif.npz``: the frames and conditions behind it.

Edits: ``--scale S,...`` multiplies the motion (dx, dy, dz; the gripper command is kept);
``--zero I,...`` sets action component I (0 dx, 1 dy, 2 dz, 3 gripper) to 0; ``--from-sequence
J,...`` takes sequence J's actions; ``--actions FILE.csv`` reads them from a file (see
:func:`read_actions_csv`). Every edit is predicted with the latent samples of the unedited
prediction, so only the conditions differ (``--scale 1`` reproduces it exactly).

End-effector positions (the other three numbers of the condition) follow the edited actions:

* **pushbot**: the sequence is simulated again from the generator's seed, with the same scene,
  hidden frictions and execution noise, under the edited actions (``pushbot.with_actions``):
  the positions the robot would have reached, and the frames it would have produced -- the
  true counterfactual the prediction is scored against;
* **otherwise** (BAIR): approximately, ``p'_{t+1} = p'_t + (p_{t+1} - p_t) + g (a'_t - a_t)``,
  the recorded motion plus a per-axis gain ``g`` fitted by least squares to the split's actions
  and position steps; the arm's true response (its controller, contacts, the workspace limits)
  is unknown. A CSV with seven columns gives the positions as well, and they are used as given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import numpy as np

from vp_jax import fileio
from vp_jax.config import load_workdir_config
from vp_jax.data import pushbot
from vp_jax.data.pipeline import open_split
from vp_jax.errors import ConfigError, DataError, cli_main
from vp_jax.evaluation import metrics
from vp_jax.predictor import Predictor
from vp_jax.report import visualize
from vp_jax.tools import cli

COMPONENTS = ("dx", "dy", "dz", "gripper")
POSITION_COLUMNS = ("x", "y", "z")


@dataclasses.dataclass(frozen=True)
class Edit:
    """One change to the actions: ``kind`` in 'unedited', 'scale', 'zero', 'from_sequence', 'actions'."""

    kind: str
    value: object = None

    @property
    def name(self) -> str:
        if self.kind == "unedited":
            return "unedited"
        if self.kind == "scale":
            return f"scale {self.value:g}"
        if self.kind == "zero":
            return f"zero {COMPONENTS[self.value]}"
        if self.kind == "from_sequence":
            return f"actions of sequence {self.value}"
        return f"actions from {os.path.basename(str(self.value))}"


# ----------------------------------------------------------------------------- CSV


def read_actions_csv(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Actions (and optionally positions) of one sequence from a CSV, parsed with pandas.

    One row per frame, frame 0 first, at least ``num_frames`` rows (more are ignored); either
    four columns (the actions: dx, dy, dz, gripper -- a data set's ``actions.csv`` as it is)
    or seven (the actions, then the end-effector position x, y, z). A header row is optional;
    with one, the columns are found by name: ``dx,dy,dz,gripper`` and optionally ``x,y,z``.

    Returns ``(actions [num_frames, 4], positions [num_frames, 3] or None)`` as float64; a
    :class:`DataError` naming the file and what was expected otherwise.
    """
    import pandas as pd

    expected = (f"expected a CSV with one row per frame (at least {num_frames}) and 4 columns "
                f"({','.join(COMPONENTS)}) or 7 ({','.join(COMPONENTS + POSITION_COLUMNS)}), header optional")
    try:
        table = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; {expected}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty; {expected}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]}); {expected}") from None

    def numeric(cell) -> bool:
        try:
            float(cell)
            return True
        except (TypeError, ValueError):
            return False

    first = list(table.iloc[0]) if len(table) else []
    if first and not any(numeric(c) for c in first):  # a header row
        names = [str(c).strip().lower() for c in first]
        table = table.iloc[1:].reset_index(drop=True)
        missing = [c for c in COMPONENTS if c not in names]
        unknown = [c for c in names if c not in COMPONENTS + POSITION_COLUMNS]
        partial = [c for c in POSITION_COLUMNS if c in names] and not all(c in names for c in POSITION_COLUMNS)
        if missing or unknown or partial or len(set(names)) != len(names):
            raise DataError(f"{path}: header {','.join(names)}; {expected}")
        order = [names.index(c) for c in COMPONENTS + (POSITION_COLUMNS if "x" in names else ())]
        table = table.iloc[:, order]
    if table.shape[1] not in (4, 7):
        raise DataError(f"{path}: {table.shape[1]} columns; {expected}")
    if len(table) < num_frames:
        raise DataError(f"{path}: {len(table)} rows; {expected}")
    values = table.iloc[:num_frames].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce")).to_numpy(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = bad[0]
        raise DataError(f"{path}: row {row + 1}, column {col + 1}: {table.iloc[row, col]!r} is not a finite number; "
                        f"{expected}")
    return values[:, :4], (values[:, 4:7] if values.shape[1] == 7 else None)


# ----------------------------------------------------------------------------- conditions


def edited_actions(edit: Edit, actions: np.ndarray, n_past: int, *, other_actions=None, csv_actions=None) -> np.ndarray:
    """``actions [F, 4]`` with ``edit`` applied to the steps ``t >= n_past - 1``."""
    out = np.array(actions, np.float64, copy=True)
    s = n_past - 1
    if edit.kind == "scale":
        out[s:, :3] *= float(edit.value)
    elif edit.kind == "zero":
        out[s:, int(edit.value)] = 0.0
    elif edit.kind == "from_sequence":
        out[s:] = np.asarray(other_actions, np.float64)[s : len(out)]
    elif edit.kind == "actions":
        n = min(len(out), len(csv_actions))
        out[s:n] = np.asarray(csv_actions, np.float64)[s:n]
    elif edit.kind != "unedited":
        raise ConfigError(f"unknown edit {edit.kind!r}")
    return out


def position_gain(cond: np.ndarray) -> np.ndarray:
    """Per-axis least-squares gain ``g`` of ``p_{t+1} - p_t ≈ g a_t`` over ``cond [N, S, 7]``."""
    c = np.asarray(cond, np.float64)
    a, step = c[:, :-1, :3].reshape(-1, 3), np.diff(c[:, :, 4:7], axis=1).reshape(-1, 3)
    denom = np.sum(a * a, axis=0)
    return np.where(denom > 0, np.sum(a * step, axis=0) / np.where(denom > 0, denom, 1.0), 0.0)


def approximate_positions(actions, positions, new_actions, gain, n_past: int) -> np.ndarray:
    """Positions under ``new_actions``: the recorded ones up to frame ``n_past - 1``, then the
    recorded steps plus ``gain x`` the change of the action (see the module docstring)."""
    positions = np.asarray(positions, np.float64)
    delta = (np.asarray(new_actions, np.float64) - np.asarray(actions, np.float64))[:, :3] * np.asarray(gain)
    out = positions.copy()
    for t in range(n_past - 1, len(out) - 1):
        out[t + 1] = out[t] + (positions[t + 1] - positions[t]) + delta[t]
    return out


def as_stored(values) -> np.ndarray:
    """float32 as the data set stores conditions (six decimals in its CSVs, read back)."""
    values = np.asarray(values, np.float64)
    return np.array([float(f"{v:.6f}") for v in values.ravel()], np.float64).reshape(values.shape).astype(np.float32)


def pushbot_episode(run, split: str, index: int, frames, cond):
    """The pushbot episode of sequence ``index`` simulated again from the data set's seed, or
    ``(None, reason)`` when the stored sequence is not that episode."""
    if run.data.source != "pushbot":
        return None, f"data.source is {run.data.source!r}, not 'pushbot'"
    seed, version = int(run.data.pushbot["seed"]), int(run.data.pushbot.get("version", pushbot.VERSION))
    ep = pushbot.simulate(pushbot.sequence_rng(seed, split, index), len(cond), version)
    if not np.array_equal(as_stored(np.concatenate([ep.actions, ep.positions], axis=1)), np.asarray(cond)):
        return None, f"the stored sequence is not the generator's sequence {index} of seed {seed}"
    if not np.array_equal(pushbot.render(ep), np.asarray(frames)):
        return None, "the simulated frames differ from the stored ones (another numpy build?)"
    return ep, ""


# ----------------------------------------------------------------------------- scores


def _psnr(pred, target) -> float:
    return float(np.mean(metrics.psnr_per_frame(np.asarray(pred, np.float32) / 255, np.asarray(target, np.float32) / 255)))


def _psnr_where(pred, target, mask) -> float | None:
    """Mean PSNR over the frames that have pixels in ``mask [T, H, W]``, on those pixels."""
    if not np.any(mask):
        return None
    per_frame = np.asarray(metrics.psnr_masked_per_frame(np.asarray(pred, np.float32) / 255,
                                                          np.asarray(target, np.float32) / 255, mask))
    return float(np.nanmean(per_frame))


def _change(a, b) -> float:
    """Mean absolute difference in grey levels (0..255) over all pixels and channels."""
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class Query:
    """One what-if: sequence ``sequence`` of ``split`` predicted under each of ``edits`` by the
    ``checkpoint`` of ``workdir``; ``predict_frames`` (default: the config's), latent samples from
    ``jax.random.key(seed)`` (default: eval.py's key); outputs in ``out`` (default
    ``WORKDIR/whatif/<split>-<sequence>``)."""

    workdir: str
    sequence: int
    edits: tuple
    split: str = "test"
    checkpoint: str = "best"
    predict_frames: int | None = None
    data_root: str | None = None
    out: str | None = None
    seed: int | None = None


def run(query: Query, predictor=None) -> dict:
    """Predict the query's sequence under each edit and write the outputs; returns the
    ``whatif.json`` dict (and ``out``). ``predictor``: a :class:`vp_jax.Predictor` of the workdir
    already loaded (else it is restored from the query's checkpoint)."""
    q = query
    predictor = predictor or Predictor.from_workdir(q.workdir, q.checkpoint, data_root=q.data_root)
    source, num_frames = _checked_source(q, predictor)
    frames = np.asarray(source.frames[q.sequence])[:num_frames]
    cond = np.asarray(source.cond[q.sequence], np.float32)  # [S, 7] raw, as stored
    episode, no_episode = pushbot_episode(predictor.run, q.split, q.sequence, np.asarray(source.frames[q.sequence]), cond)
    gain = None if episode is not None else position_gain(source.cond[:])
    key = None if q.seed is None else jax.random.key(int(q.seed))
    rows = []
    for edit in (Edit("unedited"), *q.edits):
        new_cond, counterfactual = _edited_condition(edit, source, cond, episode, gain, predictor.n_past, num_frames)
        pred = predictor.predict(frames[None, : predictor.n_past], new_cond[None, :num_frames, : predictor.cond_dim],
                                 key=key)[0, 0]
        rows.append(dict(edit=edit, cond=new_cond, pred=pred, counterfactual=counterfactual))
    if episode is not None:
        positions = ("pushbot: the sequence simulated again under each edit (same scene, hidden frictions and "
                     "execution noise); positions and the true counterfactual frames come from the simulation")
    else:
        positions = (f"approximate: recorded position steps plus gain x action change, gain per axis "
                     f"{[round(float(g), 6) for g in gain]} fitted on {source.name}"
                     + (f" ({no_episode})" if no_episode else ""))
    n_past = predictor.n_past
    report = {
        "workdir": os.path.abspath(q.workdir), "checkpoint": str(q.checkpoint), "checkpoint_step": predictor.step,
        "split": q.split, "sequence": int(q.sequence), "n_past": n_past,
        "predicted_frames": list(range(n_past, num_frames)),
        "edited_steps": f"actions {n_past - 1}..{num_frames - 1} (action t moves frame t to t+1)",
        "positions": positions, "true_counterfactual": episode is not None,
        "psnr": "lab PSNR (mean over channels of 10 log10(1/MSE)), averaged over the predicted frames",
        "mean_pixel_change": "mean |prediction - unedited prediction| over the predicted frames, grey levels 0..255",
        "edits": [_scores(row, rows[0]["pred"], frames[n_past:], n_past) for row in rows],
    }
    report["out"] = q.out or os.path.join(q.workdir, "whatif", f"{q.split}-{q.sequence}")
    _write(report, rows, frames, n_past)
    return report


def _checked_source(q: Query, predictor):
    """The split and the frames a sequence the query needs, checked against it."""
    run, n_past = predictor.run, predictor.n_past
    predict_frames = int(run.n_eval - n_past if q.predict_frames is None else q.predict_frames)
    if predict_frames < 1:
        raise ConfigError(f"--predict_frames {predict_frames}: expected at least 1 frame to predict")
    source = open_split(run.data, q.split)
    count, num_frames = len(source), n_past + predict_frames
    if not 0 <= q.sequence < count:
        raise DataError(f"--sequence {q.sequence}: {source.name} holds sequences 0..{count - 1}")
    if num_frames > source.num_frames:
        raise DataError(f"--predict_frames {predict_frames}: {source.name} has {source.num_frames} frames a sequence, "
                        f"{n_past} + {predict_frames} needed")
    for edit in q.edits:
        if edit.kind == "from_sequence" and not 0 <= edit.value < count:
            raise DataError(f"--from-sequence {edit.value}: {source.name} holds sequences 0..{count - 1}")
        if edit.kind == "actions":
            read_actions_csv(edit.value, num_frames)
    return source, num_frames


def _edited_condition(edit: Edit, source, cond, episode, gain, n_past: int, num_frames: int):
    """``(conditions [S, 7], true counterfactual frames or None)`` under one edit."""
    csv_actions, csv_positions = read_actions_csv(edit.value, num_frames) if edit.kind == "actions" else (None, None)
    other = source.cond[edit.value, :, :4] if edit.kind == "from_sequence" else None
    base = episode.actions if episode is not None else cond[:, :4].astype(np.float64)
    actions = edited_actions(edit, base, n_past, other_actions=other, csv_actions=csv_actions)
    counterfactual = None
    if episode is not None:
        ep = pushbot.with_actions(episode, actions)
        counterfactual = pushbot.render(ep)[:num_frames]
        new_cond = as_stored(np.concatenate([actions, ep.positions], axis=1))
    else:
        positions = approximate_positions(cond[:, :4], cond[:, 4:7], actions, gain, n_past)
        new_cond = np.concatenate([actions, positions], axis=1).astype(np.float32)
    if csv_positions is not None:  # positions given: used as given after the context
        new_cond[n_past:num_frames, 4:7] = csv_positions[n_past:num_frames]
    if edit.kind == "unedited":  # exactly the stored conditions
        new_cond = cond.copy()
    return new_cond, counterfactual


def _scores(row: dict, unedited, target, n_past: int) -> dict:
    """One edit's entry of ``whatif.json``."""
    entry = {"name": row["edit"].name, "psnr_vs_truth": _psnr(row["pred"], target),
             "mean_pixel_change": _change(row["pred"], unedited)}
    if row["counterfactual"] is not None:
        cf = row["counterfactual"][n_past:]
        differs = np.any(np.abs(cf.astype(np.int16) - target.astype(np.int16)) > 12, axis=-1)  # > 0.05 of 255
        entry.update(
            psnr_vs_counterfactual=_psnr(row["pred"], cf),
            counterfactual_psnr_vs_truth=_psnr(cf, target),
            counterfactual_mean_pixel_change=_change(cf, target),
            changed_pixel_fraction=float(np.mean(differs)),
            changed_pixels_psnr_vs_truth=_psnr_where(row["pred"], target, differs),
            changed_pixels_psnr_vs_counterfactual=_psnr_where(row["pred"], cf, differs),
        )
    return entry


def _write(report: dict, rows: list[dict], truth, n_past: int) -> None:
    """whatif.png, whatif.gif, whatif.npz and whatif.json in ``report['out']``."""
    out, true_cf = report["out"], report["true_counterfactual"]
    os.makedirs(out, exist_ok=True)
    strip_rows, strip_labels, gif_rows, gif_labels = [truth], ["ground truth"], [], []
    for row in rows:
        name, full = row["edit"].name, np.concatenate([truth[:n_past], row["pred"]])
        strip_rows.append(full)
        strip_labels.append(f"{name}: prediction")
        if true_cf and row["edit"].kind != "unedited":
            strip_rows.append(row["counterfactual"])
            strip_labels.append(f"{name}: true")
        gif_rows.append([full, truth if row["edit"].kind == "unedited" else row["counterfactual"]])
        gif_labels.append(name)
    visualize.write_labelled_strip(strip_rows, strip_labels, n_past, os.path.join(out, "whatif.png"))
    titles = ("prediction", "truth under the edit" if true_cf else "truth")
    visualize.write_labelled_gif(gif_rows, gif_labels, n_past, os.path.join(out, "whatif.gif"), titles=titles)
    arrays = dict(names=np.array([r["edit"].name for r in rows]), truth=truth, pred=np.stack([r["pred"] for r in rows]),
                  cond=np.stack([r["cond"][: len(truth)] for r in rows]))
    if true_cf:
        arrays["counterfactual"] = np.stack([r["counterfactual"] for r in rows])
    with fileio.atomic_path(os.path.join(out, "whatif.npz"), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    fileio.write_json(os.path.join(out, "whatif.json"), {k: v for k, v in report.items() if k != "out"})


# ----------------------------------------------------------------------------- command line


def _numbers(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated {'integers' if kind is int else 'numbers'}") from None
    if not values:
        raise ConfigError(f"{flag} {text!r}: expected at least one value")
    return values


def parse_edits(args) -> list[Edit]:
    edits = []
    for s in _numbers(args.scale, float, "--scale") if args.scale else []:
        if not np.isfinite(s):
            raise ConfigError(f"--scale {args.scale}: expected finite numbers")
        edits.append(Edit("scale", s))
    for i in _numbers(args.zero, int, "--zero") if args.zero else []:
        if not 0 <= i < len(COMPONENTS):
            raise ConfigError(f"--zero {i}: expected an action component 0..3 ({', '.join(COMPONENTS)})")
        edits.append(Edit("zero", i))
    for j in _numbers(args.from_sequence, int, "--from-sequence") if args.from_sequence else []:
        edits.append(Edit("from_sequence", j))
    for path in args.actions or []:
        edits.append(Edit("actions", path))
    if not edits:
        raise ConfigError("no edit given: use --scale, --zero, --from-sequence or --actions")
    return edits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vp_jax.tools.whatif", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a workdir written by train.py")
    parser.add_argument("--sequence", type=int, required=True, help="index K of the sequence in the split")
    parser.add_argument("--split", default="test", choices=("train", "validate", "test"))
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step number")
    parser.add_argument("--scale", help="comma-separated factors for the motion (dx, dy, dz), e.g. 0,0.5,1.5")
    parser.add_argument("--zero", help="comma-separated action components to set to 0 (0 dx, 1 dy, 2 dz, 3 gripper)")
    parser.add_argument("--from-sequence", dest="from_sequence", help="comma-separated sequences whose actions to use")
    parser.add_argument("--actions", action="append", metavar="FILE.csv",
                        help="actions (4 columns) or actions and positions (7), one row per frame; repeatable")
    parser.add_argument("--predict_frames", type=int, default=None,
                        help="frames to predict (default: the config's n_eval - n_past)")
    parser.add_argument("--seed", type=int, default=None, help="latent samples from jax.random.key(SEED) "
                        "(default: eval.py's key)")
    parser.add_argument("--data_root", default=None, help="override config.data.root (data moved since training)")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/whatif/<split>-<K>)")
    return parser


@cli_main
def main(argv=None) -> None:
    parser = build_parser()

    def error(message):  # argparse's usage errors: one line, exit 2, as the other entry points
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    args = parser.parse_args(argv)
    edits = parse_edits(args)
    cli.start([parser.prog])
    config = load_workdir_config(args.workdir, args.data_root)  # a missing or bad workdir: one line, before the model
    num_frames = config.n_past + (config.n_eval - config.n_past if args.predict_frames is None else args.predict_frames)
    for edit in edits:  # a bad CSV: one line, before the model loads
        if edit.kind == "actions":
            read_actions_csv(edit.value, num_frames)
    report = run(Query(args.workdir, args.sequence, tuple(edits), split=args.split, checkpoint=args.checkpoint,
                       predict_frames=args.predict_frames, data_root=args.data_root, out=args.out, seed=args.seed))
    print(f"{args.split} sequence {args.sequence}, checkpoint step {report['checkpoint_step']} ({args.checkpoint}), "
          f"frames {report['predicted_frames'][0]}..{report['predicted_frames'][-1]} predicted")
    print(f"positions: {report['positions']}")
    cf = report["true_counterfactual"]
    header = f"{'edit':<28} {'PSNR vs truth':>13} {'pixel change':>12}"
    if cf:
        header += f" {'PSNR vs true counterfactual':>27} {'true change':>11}"
    print(header)
    for e in report["edits"]:
        line = f"{e['name']:<28} {e['psnr_vs_truth']:>13.2f} {e['mean_pixel_change']:>12.2f}"
        if cf:
            line += f" {e['psnr_vs_counterfactual']:>27.2f} {e['counterfactual_mean_pixel_change']:>11.2f}"
        print(line)
    print(f"wrote {report['out']}/whatif.png, whatif.gif, whatif.json, whatif.npz")


if __name__ == "__main__":
    main()
