"""Look at a data set before training on it: splits, counts, frames, condition ranges, damage.

    python -m vp_jax.data.inspect data/pushbot
    python -m vp_jax.data.inspect /data/softmotion30_44k --sheet bair.png     # the BAIR release's TFRecords
    python -m vp_jax.data.inspect data/bair --limit 512                         # first 512 sequences a split
    python -m vp_jax.data.inspect ~/tensorflow_datasets --source tfds --camera image_main

Prints, for each split, its sequences, how many were read and the frames per sequence; then,
for each condition column, what it is, its unit, and min / max / mean / std over every frame
read; then the first problem found (a damaged file or record, a missing split) with the number
of bad sequences. ``--sheet PNG`` writes a contact sheet: the first few sequences of the first
split, one a row, every third frame across, at twice the size.

The source is recognised from the folder (``--source`` says it instead):

* ``pushbot``: a folder written by ``python -m vp_jax.data.pushbot`` (its ``pushbot.json``);
* ``bair``: the BAIR release's ``softmotion30_44k`` folder (``train/`` and ``test/`` TFRecords),
  or a folder holding it;
* ``tfds``: a TFDS data dir holding ``bair_robot_pushing_small`` (an ArrayRecord copy);
* ``lab``: the lab's ``{train,validate,test}/<d1>/<d2>/`` folders, also what
  ``python -m vp_jax.data.bair`` writes (its ``manifest.json`` names the camera).

Every sequence is read (``--limit`` reads fewer), so damage anywhere is found; reading the full
BAIR release takes minutes, with a progress bar. Exit status 0 when everything read is sound,
2 with one ``error:`` line naming the first problem otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import os

import numpy as np
from tqdm.auto import tqdm

from vp_jax.data.bair import BairRecords, finished_manifest, release_root
from vp_jax.data.lab_folders import SPLITS, LabFolders, contact_sheet
from vp_jax.data.pushbot import MARKER
from vp_jax.data.tfds_bair import DATASET, TfdsBair
from vp_jax.errors import DataError, cli_main
from vp_jax.fileio import atomic_path

SOURCES = ("lab", "pushbot", "bair", "tfds")

# (feature, column, what it is): the 7 condition columns, in the order of ``cond``.
COLUMNS = (
    ("action", "dx", "commanded end-effector motion"),
    ("action", "dy", "commanded end-effector motion"),
    ("action", "dz", "commanded end-effector motion"),
    ("action", "gripper", "gripper command"),
    ("endeffector_pos", "x", "measured end-effector position"),
    ("endeffector_pos", "y", "measured end-effector position"),
    ("endeffector_pos", "z", "measured end-effector position"),
)
# Units per source: BAIR's are the robot's, as recorded; pushbot's are documented in vp_jax.data.pushbot.
_BAIR_UNITS = ("robot frame, as recorded",) * 3 + ("as recorded",) + ("robot frame, as recorded",) * 3
UNITS = {
    "bair": _BAIR_UNITS,
    "tfds": _BAIR_UNITS,
    "lab": _BAIR_UNITS,
    "pushbot": ("0.05 world units/frame",) * 3 + ("+1 open, -1 closed",) + ("world units",) * 3,
}


def detect_source(root: str) -> str:
    """Which reader ``root`` needs: 'pushbot', 'tfds', 'bair' or 'lab' (see the module docstring)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: not found")
    if os.path.isfile(os.path.join(root, MARKER)):
        return "pushbot"
    if os.path.isdir(os.path.join(root, DATASET)):
        return "tfds"
    try:
        release_root(root)
        return "bair"
    except DataError:
        pass
    if any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
        return "lab"
    raise DataError(
        f"{root}: not a data set vp_jax reads (expected {'/'.join(SPLITS)} folders, the BAIR release's "
        f"train/ and test/ TFRecords, or a TFDS data dir with {DATASET})"
    )


def _split_reader(source: str, root: str, split: str, camera: str):
    """(number of sequences, iterator of ``(name, (frames, cond) | DataError)``) of one split."""
    if source in ("lab", "pushbot"):
        reader = LabFolders(root, split)
        return len(reader), reader.iter_sequences(skip_bad=True)
    if source == "bair":
        reader = BairRecords(root, split, camera)
    else:
        reader = TfdsBair(root, split, camera=camera)
    return len(reader), reader.iter_sequences(skip_bad=True)


def inspect(
    root: str,
    source: str | None = None,
    camera: str = "image_aux1",
    limit: int | None = None,
    sheet_sequences: int = 0,
    progress: bool = False,
) -> dict:
    """Read a data set and describe it (see the module docstring).

    Returns ``{'source', 'root', 'camera', 'splits': {split: {'sequences', 'read', 'frames', 'bad'}},
    'columns': [{'feature', 'column', 'meaning', 'unit', 'min', 'max', 'mean', 'std'}], 'bad',
    'first_problem' (str or None), 'sheet' (up to ``sheet_sequences`` frame arrays of the first
    split, uint8 ``[T, 64, 64, 3]``)}``. Statistics are over every frame of every sound sequence read.
    """
    root = os.path.expanduser(root)
    source = source or detect_source(root)
    if source not in SOURCES:
        raise DataError(f"source {source!r}: expected one of {SOURCES}")
    if source == "pushbot":
        camera = "synthetic"
    elif source == "lab":
        manifest = finished_manifest(root)  # folders written by python -m vp_jax.data.bair name their camera
        camera = manifest["camera"] if manifest else "unknown"
    n_cols = len(COLUMNS)
    lo, hi = np.full(n_cols, np.inf), np.full(n_cols, -np.inf)
    total, total_sq, count = np.zeros(n_cols), np.zeros(n_cols), 0
    splits, bad, first_problem, sheet = {}, 0, None, []
    for split in SPLITS:
        try:
            n, items = _split_reader(source, root, split, camera)
        except DataError as err:
            splits[split] = dict(sequences=0, read=0, frames=None, bad=0, problem=str(err))
            first_problem = first_problem or str(err)
            continue
        info = dict(sequences=n, read=0, frames=None, bad=0)
        shown = n if limit is None else min(n, limit)
        for _, value in tqdm(itertools.islice(items, limit), total=shown, desc=split, unit=" sequences", disable=None if progress else True, leave=False):
            info["read"] += 1
            if isinstance(value, DataError):
                info["bad"] += 1
                first_problem = first_problem or str(value)
                continue
            frames, cond = value
            info["frames"] = len(frames)
            c = np.asarray(cond, np.float64)
            lo, hi = np.minimum(lo, c.min(0)), np.maximum(hi, c.max(0))
            total += c.sum(0)
            total_sq += (c * c).sum(0)
            count += len(c)
            if len(sheet) < sheet_sequences and (not sheet or len(frames) == len(sheet[0])):
                sheet.append(np.array(frames))
        bad += info["bad"]
        splits[split] = info
    units = UNITS[source]
    columns = []
    for k, (feature, column, meaning) in enumerate(COLUMNS):
        mean = total[k] / count if count else float("nan")
        std = float(np.sqrt(max(total_sq[k] / count - mean * mean, 0.0))) if count else float("nan")
        stats = dict(min=float(lo[k]), max=float(hi[k]), mean=float(mean), std=std) if count else {}
        columns.append(dict(feature=feature, column=column, meaning=meaning, unit=units[k], **stats))
    return dict(
        source=source, root=root, camera=camera, splits=splits, columns=columns, bad=bad,
        first_problem=first_problem, sheet=sheet,
    )


def format_report(report: dict) -> str:
    """The report as the text the command prints."""
    lines = [f"{report['source']} data at {report['root']} (camera: {report['camera']})", ""]
    lines.append(f"{'split':<10} {'sequences':>9} {'read':>9} {'frames':>6} {'bad':>5}")
    for split, info in report["splits"].items():
        frames = info["frames"] if info["frames"] is not None else "-"
        lines.append(f"{split:<10} {info['sequences']:>9} {info['read']:>9} {frames:>6} {info['bad']:>5}")
    lines += ["", f"{'condition':<24} {'what it is':<31} {'unit':<25} {'min':>9} {'max':>9} {'mean':>9} {'std':>9}"]
    for c in report["columns"]:
        name = f"{c['feature']} {c['column']}"
        stats = " ".join(f"{c[k]:>9.4g}" for k in ("min", "max", "mean", "std")) if "min" in c else "(nothing read)"
        lines.append(f"{name:<24} {c['meaning']:<31} {c['unit']:<25} {stats}")
    lines.append("")
    lines.append(f"first problem: {report['first_problem']}" if report["first_problem"] else "no problems found")
    return "\n".join(lines)


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vp_jax.data.inspect", description=__doc__.split("\n")[0])
    p.add_argument("root", help="data folder: lab layout, pushbot, BAIR softmotion30_44k, or a TFDS data dir")
    p.add_argument("--source", choices=SOURCES, help="how to read ROOT (default: recognised from the folder)")
    p.add_argument("--camera", default="image_aux1", choices=("image_aux1", "image_main"), help="bair and tfds")
    p.add_argument("--limit", type=int, help="read at most this many sequences of each split")
    p.add_argument("--sheet", metavar="PNG", help="write a contact sheet of a few sequences")
    p.add_argument("--sheet-sequences", type=int, default=4, help="rows of the contact sheet")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit {args.limit}: expected >= 1")
    report = inspect(
        args.root, args.source, args.camera, args.limit, args.sheet_sequences if args.sheet else 0, progress=True
    )
    print(format_report(report))
    if args.sheet:
        if not report["sheet"]:
            raise DataError(f"{args.root}: no sound sequence to put on a contact sheet")
        import imageio.v3 as iio

        with atomic_path(args.sheet, suffix=".png") as tmp:
            iio.imwrite(tmp, contact_sheet(report["sheet"]))
        print(f"wrote {args.sheet}: {len(report['sheet'])} sequences, every third frame")
    if report["first_problem"]:
        s = "" if report["bad"] == 1 else "s"
        count = f" ({report['bad']} bad sequence{s} in what was read)" if report["bad"] else ""
        raise DataError(f"{report['first_problem']}{count}")


if __name__ == "__main__":
    main()
