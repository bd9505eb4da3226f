"""Pushbot: a synthetic robot-pushing data set in the lab's folder layout (the quickstart's data).

    python -m vp_jax.data.pushbot --out data/pushbot [--train 1000 --validate 256 --test 256 --seed 0]
    python -m vp_jax.data.pushbot --preview grid.png     # a few sequences as one PNG grid

Writes ``OUT/{train,validate,test}/pushbot_<split>_<chunk>/<index>/{0..29}.png`` (64x64 RGB),
``actions.csv`` (30 x 4) and ``endeffector_positions.csv`` (30 x 3), exactly the layout of the
lab's BAIR data, so :mod:`vp_jax.data.lab_folders` reads both, plus ``OUT/pushbot.json``
(generator version, seed, counts), written last.

Two versions (``--version``; a set's marker records its version, and each stays reproducible
byte for byte): **version 1** is quasi-static (below); **version 2** (the default) leaves the
future open in the frames a model is scored on. There a pushed object keeps the gripper's speed
and slides on, losing a hidden share U(0.12, 0.6) of its speed a frame (so it comes to rest
after a visibly different distance), bouncing off the rim and the other objects; in 85 % of
sequences the policy starts pushing within the first frames; and in 90 % one object that nobody
controls (the "wanderer") moves by itself at 1.3-3 px a frame and, at hidden random times,
heads somewhere new (15 % a frame) or stops and starts again (6 %), as the digits of stochastic
moving MNIST. The robot stays a deterministic function of the conditions.
:func:`replay` draws an episode's hidden randomness again for what its first frames have not
shown yet, keeping those frames exact: the futures a perfect model would have to choose from
(``benchmarks/latent_bound.py``, ``eval.py --num_samples N``).

The world (units like BAIR's end-effector positions, all within [-0.3, 0.9]):

* A table seen from a fixed camera above it: world ``x`` in [0.3, 0.9] runs down the image rows,
  ``y`` in [-0.3, 0.3] across the columns, ``z`` >= 0 is height above the table. Each sequence
  has its own table colour and low-contrast wood-like texture, and a dark rim at the table edge.
* A gripper on an arm that reaches in from the top edge. Its end-effector position (x, y, z)
  fixes where it is drawn: its shadow sits at the ground point (x, y); the gripper itself is
  drawn ``z * 40`` pixels higher in the image (oblique camera) and ``1 + 1.2 z`` times larger
  (closer to the camera); the arm is a thick bar from a fixed base above the image to the
  gripper, drawn over everything it passes. Two orange finger pads are spread apart in frame
  t+1 when the gripper command of action t is +1 (open), close together when it is -1.
* 2-4 objects (disc, square, triangle; sizes 3.7-7 px; saturated colours). They move only when
  the gripper is low (z < 0.05) and its footprint overlaps them: the object is pushed out of the
  footprint and (version 1) slides on by a hidden per-object fraction of the gripper's step
  (friction), and pushes the objects it hits in the same frame. Objects stay on the table. Because the
  friction is hidden, how far an object travels is not determined by the conditions.
* A random policy mixes smooth wandering with reaching for an object, lowering behind it and
  pushing it towards a point on the table, then lifting (about 9 sequences in 10 push).
  Action t = (dx, dy, dz, gripper) in [-1, 1], the command for the move from frame t to t+1 in
  units of 0.05 (≈ 5.3 px per frame at full speed); executed move = 0.05 (action + N(0, 0.05²)),
  clipped to the workspace; ``endeffector_positions.csv`` holds the executed positions.

Frames are rendered with numpy, vectorised over time (~8 ms a sequence), and written by a
small PNG encoder of our own (:func:`vp_jax.data.lab_folders.encode_png`: 3x faster than going
through imageio, and standard PNGs that any reader opens); 1,512 sequences take ~25 s on 2 cores.

Every sequence draws from its own ``numpy`` generator seeded by ``(seed, split, index)``, so
splits are disjoint streams, any worker count gives the same bytes, and the same seed gives
byte-identical files (on the same numpy build: float32 ``sin``/``sqrt`` may differ in the last
bit between CPU instruction sets, which can move a pixel by one level). :func:`ensure_pushbot`
generates a set only if it is missing, into a temporary sibling folder renamed into place when
complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time

import imageio.v3 as iio
import numpy as np

from vp_jax.data.lab_folders import (  # noqa: F401 (encode_png: public here too)
    contact_sheet,
    encode_png,
    sequence_files,
    write_sequence,
)
from vp_jax.errors import DataError, cli_main

VERSION = 2  # what generate() writes unless asked for another; VERSIONS lists those it can write
VERSIONS = (1, 2)
MARKER = "pushbot.json"
NUM_FRAMES = 30
SIZE = 64
SPLIT_IDS = {"train": 0, "validate": 1, "test": 2}
CHUNK = 256  # sequences per <d1> folder, as BAIR's traj_0_to_255.tfrecords

# World <-> image. Ground point (x, y, 0) is drawn at row (x - X_MIN) * PX, column (y - Y_MIN) * PX.
X_MIN, X_MAX, Y_MIN, Y_MAX = 0.3, 0.9, -0.3, 0.3
PX = SIZE / (X_MAX - X_MIN)  # pixels per world unit (106.7)
RIM = 3.0 / PX  # table rim width: objects stay inside it
HEIGHT_PX = 40.0  # image rows the gripper rises per unit of z
BASE_UV = (32.0, -14.0)  # arm base (column, row), above the image's top edge

# Gripper workspace and dynamics.
GRIP_LO = np.array([0.34, -0.26, 0.0])
GRIP_HI = np.array([0.86, 0.26, 0.25])
STEP = 0.05  # world units per frame for an action of 1
ACTION_NOISE = 0.05  # std of the execution noise, in action units
Z_CONTACT = 0.05  # the gripper pushes only below this height
GRIP_RADIUS = 0.045  # footprint radius for pushing (world units)
SLIP_MAX = 0.8  # version 1: a pushed object slides on by U(0, SLIP_MAX) x the step (hidden)
FRICTION = (0.12, 0.6)  # version 2: a sliding object loses U(FRICTION) of its speed a frame (hidden)
V_STOP = 0.003  # version 2: slower than this (world units a frame, 0.3 px) a sliding object stops
WANDER_SPEED = (0.012, 0.028)  # version 2: the uncontrolled object's speed (1.3-3 px a frame)
TURN_P, TOGGLE_P = 0.15, 0.06  # version 2: per frame, it heads somewhere new / stops or starts

SHAPES = ("disc", "square", "triangle")


@dataclasses.dataclass
class Hidden:
    """What the conditions leave open: the draws that set where the objects go.

    ``friction [K]``: version 1, how far a pushed object slides on (a fraction of the gripper's
    step, U(0, SLIP_MAX)); version 2, the share of its speed a sliding object loses a frame.
    Version 2 only, for the move from frame t to t+1 (``[T]``): ``turn`` the uncontrolled object
    heads to ``heading`` (radians), ``toggle`` it stops when moving, starts when still.
    """

    friction: np.ndarray
    turn: np.ndarray | None = None
    heading: np.ndarray | None = None
    toggle: np.ndarray | None = None


@dataclasses.dataclass
class Episode:
    """One simulated sequence (world units; T frames, K objects).

    positions [T, 3] executed end-effector (x, y, z); actions [T, 4] commands (dx, dy, dz, grip);
    opening [T] drawn finger opening in [-1, 1]; obj_pos [T, K, 2] object centres (x, y);
    touched [T, K] gripper footprint overlapped object k on the move into frame t (pushed it);
    moved [T, K] object k moved on the move into frame t; ``hidden`` (:class:`Hidden`);
    ``seen [K]`` the first frame whose picture depends on object k's friction (T: none);
    ``wanderer`` the object that moves by itself (-1: none), at ``wander`` = (speed, heading) in
    frame 0; noise [T, 3] the execution noise of the move from frame t (action units).
    """

    positions: np.ndarray
    actions: np.ndarray
    opening: np.ndarray
    obj_pos: np.ndarray
    touched: np.ndarray
    moved: np.ndarray
    obj_shape: list
    obj_radius: np.ndarray
    obj_colour: np.ndarray
    obj_angle: np.ndarray
    hidden: Hidden
    table: dict
    noise: np.ndarray
    version: int = VERSION
    wanderer: int = -1
    wander: tuple = (0.0, 0.0)
    seen: np.ndarray | None = None


def sequence_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one sequence: independent streams per (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_IDS[split], int(index)]))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


# ----------------------------------------------------------------------------- simulation

_TABLE_LO = np.array([X_MIN + RIM, Y_MIN + RIM])
_TABLE_HI = np.array([X_MAX - RIM, Y_MAX - RIM])


def _place_objects(rng, k):
    radius = rng.uniform(0.035, 0.066, size=k)
    pos = np.zeros((k, 2))
    for i in range(k):
        for _ in range(200):  # rejection sampling: no overlaps, a little air between objects
            p = rng.uniform(_TABLE_LO + radius[i] + 0.03, _TABLE_HI - radius[i] - 0.03)
            if all(np.hypot(*(p - pos[j])) > radius[i] + radius[j] + 0.03 for j in range(i)):
                break
        pos[i] = p
    return pos, radius


def draw_hidden(rng, version: int, k: int, num_frames: int) -> Hidden:
    """A fresh draw of an episode's :class:`Hidden` from the generator's prior."""
    if version == 1:
        return Hidden(rng.uniform(0.0, SLIP_MAX, size=k))
    return Hidden(rng.uniform(*FRICTION, size=k), rng.random(num_frames) < TURN_P,
                  rng.uniform(0, 2 * np.pi, num_frames), rng.random(num_frames) < TOGGLE_P)


def _push_out(obj, radius, slip, g0, g1):
    """Objects overlapping the gripper's footprint at g1 are put back on its rim and slide on by
    ``slip`` x the step along the contact normal; returns touched bool [K]."""
    step = g1 - g0
    touched = np.zeros(len(radius), bool)
    for i in range(len(radius)):
        d = obj[i] - g1
        dist = math.hypot(d[0], d[1])
        reach = GRIP_RADIUS + radius[i]
        if dist < reach:
            n = d / dist if dist > 1e-9 else (step / (np.hypot(*step) + 1e-12))
            obj[i] = g1 + n * (reach + slip[i] * max(0.0, float(step @ n)))
            touched[i] = True
    return touched


def _separate(obj, radius, active):
    """Overlapping objects are pushed apart, a few passes: a moving (``active``) object moves the
    one it hits, which becomes active; two of a kind share the gap."""
    k = len(radius)
    for _ in range(4):
        any_overlap = False
        for i in range(k):
            for j in range(i + 1, k):
                d = obj[j] - obj[i]
                dist = math.hypot(d[0], d[1])
                gap = radius[i] + radius[j] - dist
                if gap > 1e-9:
                    any_overlap = True
                    n = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
                    if active[i] and not active[j]:
                        obj[j] += n * gap
                        active[j] = True
                    elif active[j] and not active[i]:
                        obj[i] -= n * gap
                        active[i] = True
                    else:
                        obj[i] -= n * gap / 2
                        obj[j] += n * gap / 2
        if not any_overlap:
            return


class _Objects:
    """The objects of an episode and their physics, one move at a time.

    Version 1 (quasi-static): an object moves only when the low gripper's footprint overlaps
    it; it is put back on the footprint's rim and slides on by its ``friction`` x the step.
    Version 2 adds momentum: a pushed object keeps its velocity and loses ``friction`` of it a
    frame, bouncing off the rim and knocking the objects it hits; the ``wanderer`` moves by
    itself at a constant speed, bouncing off the rim, heading elsewhere or stopping and starting
    at the hidden times. Objects stay on the table.
    """

    def __init__(self, ep: Episode, hidden: Hidden):
        self.ep, self.hidden = ep, hidden
        self.pos = ep.obj_pos[0].copy()
        self.vel = np.zeros_like(self.pos)
        self.speed, self.heading = ep.wander
        self.running = True
        self.seen = np.full(len(self.pos), len(ep.positions))

    def move(self, t: int, g0, g1, low: bool):
        """Advance from frame t to t+1 with the gripper moving g0 -> g1 (ground xy);
        returns (touched, moved) bool [K]."""
        ep, before = self.ep, self.pos.copy()
        v2 = ep.version >= 2
        if v2:
            self._coast(t)
        touched = _push_out(self.pos, ep.obj_radius, np.zeros_like(ep.obj_radius) if v2 else self.hidden.friction, g0, g1) \
            if low else np.zeros(len(self.pos), bool)
        if v2 or touched.any():
            _separate(self.pos, ep.obj_radius, touched | np.any(self.pos != before, axis=1))
            free = self.pos.copy()
            np.clip(self.pos, _TABLE_LO + ep.obj_radius[:, None], _TABLE_HI - ep.obj_radius[:, None], out=self.pos)
            if v2:
                self._bounce(before, free)
        if not v2:  # the slip takes effect where the object is pushed
            self.seen = np.where(touched & (self.seen > t + 1), t + 1, self.seen)
        return touched, np.any(self.pos != before, axis=1)

    def _coast(self, t: int) -> None:
        """Sliding objects slow down by their friction (which the picture shows from then on);
        the wanderer takes its hidden turns; everything moves by its velocity."""
        h, w = self.hidden, self.ep.wanderer
        sliding = np.any(self.vel != 0, axis=1)
        self.seen = np.where(sliding & (self.seen > t + 1), t + 1, self.seen)
        self.vel *= (1.0 - h.friction)[:, None]
        self.vel[np.hypot(self.vel[:, 0], self.vel[:, 1]) < V_STOP] = 0.0
        if w >= 0:
            self.running ^= bool(h.toggle[t])
            self.heading = h.heading[t] if h.turn[t] else self.heading
            self.vel[w] = self.running * self.speed * np.array([math.cos(self.heading), math.sin(self.heading)])
        self.pos += self.vel

    def _bounce(self, before, free) -> None:
        """Velocity = this move's displacement, reflected (at half speed) where the rim stopped it."""
        hit = free != self.pos  # [K, 2]
        self.vel = np.where(hit, -0.5 * (free - before), self.pos - before)
        w = self.ep.wanderer
        if w >= 0 and hit[w].any():
            c, s = math.cos(self.heading), math.sin(self.heading)
            self.heading = math.atan2(-s if hit[w, 1] else s, -c if hit[w, 0] else c)


class _Policy:
    """Random scripted policy: waypoints from 'push an object' and 'wander' behaviours."""

    def __init__(self, rng, k, pushable=None):
        self.rng = rng
        self.k = k
        self.pushable = pushable  # the objects it may push (None: any)
        self.waypoints = []  # (target xyz, speed, grip)
        self.jitter = np.zeros(3)
        self.grip = float(rng.choice([-1.0, 1.0]))
        self.push_prob = 0.85 if rng.random() < 0.92 else 0.0  # ~1 in 12 sequences only wander
        self.steps_on_target = 0

    def _plan(self, obj, radius, push: bool | None = None):
        rng = self.rng
        if push is None:
            push = rng.random() < self.push_prob
        if push:
            i = int(rng.integers(self.k)) if self.pushable is None else int(rng.choice(self.pushable))
            # Push towards a point on the table, so pushes are long and objects stay on it.
            goal = rng.uniform([0.42, -0.18], [0.78, 0.18])
            d = goal - obj[i]
            n = d / (np.hypot(*d) + 1e-9)
            approach = obj[i] - n * (radius[i] + GRIP_RADIUS + 0.035)
            through = obj[i] + n * rng.uniform(0.08, 0.2)
            low = rng.uniform(0.0, 0.03)
            fast = rng.uniform(0.7, 1.0)
            self.waypoints = [
                (np.array([*approach, rng.uniform(0.1, 0.2)]), fast, 1.0),
                (np.array([*approach, low]), 0.9, 1.0),
                (np.array([*through, low]), rng.uniform(0.5, 1.0), -1.0),
                (np.array([*through, rng.uniform(0.12, 0.25)]), fast, -1.0),
            ]
            self.push_prob = 0.6
        else:
            self.waypoints = [(rng.uniform(GRIP_LO, GRIP_HI), rng.uniform(0.5, 1.0), float(rng.choice([-1.0, 1.0])))]
        # Targets outside the workspace (behind an object at the table edge) are unreachable.
        self.waypoints = [(np.clip(p, GRIP_LO, GRIP_HI), v, g) for p, v, g in self.waypoints]
        self.steps_on_target = 0

    def start_pushing(self, obj, radius) -> np.ndarray:
        """Version 2: plan a push and return a start position low behind the object, so that the
        push begins within the first frames (the approach waypoints are skipped)."""
        self._plan(obj, radius, push=True)
        (approach, _, _), (start, _, _) = self.waypoints[:2]
        through = self.waypoints[2][0]
        n = (through[:2] - start[:2]) / (np.hypot(*(through[:2] - start[:2])) + 1e-9)
        start = start.copy()
        start[:2] -= n * self.rng.uniform(0.0, 0.06)
        self.waypoints = self.waypoints[2:]
        self.grip = 1.0
        return np.clip(start, GRIP_LO, GRIP_HI)

    def act(self, p, obj, radius) -> np.ndarray:
        """The command (dx, dy, dz, grip) in [-1, 1] for the move from the current frame."""
        while True:
            if not self.waypoints:
                self._plan(obj, radius)
            target, speed, grip = self.waypoints[0]
            d = (target - p) / STEP
            dist = float(np.linalg.norm(d))
            if dist > 0.35 and self.steps_on_target < 12:  # give up on a target after 12 frames
                break
            self.waypoints.pop(0)
            self.steps_on_target = 0
        self.steps_on_target += 1
        # Smooth wandering: an Ornstein-Uhlenbeck jitter on top of heading to the waypoint.
        self.jitter = 0.7 * self.jitter + self.rng.normal(0.0, 0.12, 3)
        move = d * min(1.0, speed / dist) + self.jitter
        self.grip = grip
        return np.concatenate([np.clip(move, -1.0, 1.0), [grip]])


def _scene(rng, version: int, num_frames: int) -> tuple[Episode, _Policy, np.ndarray]:
    """The scene of a new episode (objects, table, hidden draws), its policy and the gripper's
    start position; trajectories are filled in by :func:`simulate`."""
    k = int(rng.integers(2, 5))
    obj, radius = _place_objects(rng, k)
    shapes = [SHAPES[int(s)] for s in rng.integers(len(SHAPES), size=k)]
    colours = np.stack(
        [_hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.95)) for _ in range(k)]
    )
    angle = rng.uniform(0, 2 * np.pi, size=k)
    friction = rng.uniform(0.0, SLIP_MAX, size=k)  # version 1's hidden draw (kept in its place)
    table = dict(
        hue=rng.random(),
        sat=rng.uniform(0.05, 0.35),
        val=rng.uniform(0.55, 0.8),
        grain_angle=rng.uniform(0, np.pi),
        grain_freq=rng.uniform(0.25, 0.7),
        grain_warp=rng.uniform(0.5, 2.5),
        blotch=rng.uniform(0.02, 0.08, size=(2, 2)),
        phase=rng.uniform(0, 2 * np.pi, size=4),
        noise_seed=int(rng.integers(2**31)),
    )
    p = rng.uniform([0.4, -0.2, 0.1], [0.8, 0.2, 0.25])
    shape = (num_frames, k)
    ep = Episode(np.zeros((num_frames, 3)), np.zeros((num_frames, 4)), np.zeros(num_frames),
                 np.repeat(obj[None], num_frames, axis=0), np.zeros(shape, bool), np.zeros(shape, bool), shapes,
                 radius, colours, angle, Hidden(friction), table, np.zeros((num_frames, 3)), version)
    if version == 1:
        return ep, _Policy(rng, k), p
    ep.hidden = draw_hidden(rng, version, k, num_frames)
    if rng.random() < 0.9:  # most scenes have an object nobody controls
        ep.wanderer = k - 1
        ep.wander = (rng.uniform(*WANDER_SPEED), rng.uniform(0, 2 * np.pi))
    policy = _Policy(rng, k, [i for i in range(k) if i != ep.wanderer])
    if rng.random() < 0.85:  # most sequences push from the start, so the outcome shows early
        p = policy.start_pushing(obj, radius)
    return ep, policy, p


def simulate(rng: np.random.Generator, num_frames: int = NUM_FRAMES, version: int = VERSION) -> Episode:
    """Simulate one sequence of ``num_frames`` frames of pushbot ``version`` (module docstring)."""
    if version not in VERSIONS:
        raise DataError(f"pushbot version {version}: expected one of {VERSIONS}")
    ep, policy, p = _scene(rng, version, num_frames)
    objects = _Objects(ep, ep.hidden)
    ep.opening[0] = policy.grip
    for t in range(num_frames):
        ep.positions[t], ep.obj_pos[t] = p, objects.pos
        a = policy.act(p, objects.pos, ep.obj_radius)
        ep.actions[t] = a
        if t + 1 == num_frames:
            break
        ep.noise[t] = rng.normal(0.0, ACTION_NOISE, 3)
        new_p = np.clip(p + STEP * (a[:3] + ep.noise[t]), GRIP_LO, GRIP_HI)
        ep.touched[t + 1], ep.moved[t + 1] = objects.move(t, p[:2], new_p[:2], new_p[2] < Z_CONTACT)
        ep.opening[t + 1] = a[3]
        p = new_p
    ep.seen = objects.seen
    return ep


def objects_under(ep: Episode, hidden: Hidden) -> Episode:
    """``ep`` with its objects moved again, by the physics, under ``hidden`` along ``ep``'s gripper path."""
    objects = _Objects(ep, hidden)
    obj_pos, touched, moved = np.zeros_like(ep.obj_pos), np.zeros_like(ep.touched), np.zeros_like(ep.moved)
    obj_pos[0] = objects.pos
    for t in range(len(ep.positions) - 1):
        p, new_p = ep.positions[t], ep.positions[t + 1]
        touched[t + 1], moved[t + 1] = objects.move(t, p[:2], new_p[:2], new_p[2] < Z_CONTACT)
        obj_pos[t + 1] = objects.pos
    return dataclasses.replace(ep, obj_pos=obj_pos, touched=touched, moved=moved, hidden=hidden, seen=objects.seen)


def replay(ep: Episode, rng: np.random.Generator, since: int) -> Episode:
    """The episode with the hidden draws that frames ``0 .. since-1`` do not show drawn again from
    the generator's prior (``rng``): same conditions, same first ``since`` frames, another future.

    Redrawn: the friction of every object whose friction no frame before ``since`` depends on
    (``ep.seen``), and the wanderer's turns, stops and starts from the move into frame ``since``
    on. The gripper's path, the actions and the fingers are kept. The set of such replays is
    what a model given the context and the conditions cannot tell apart: the futures its latent
    has to cover (:func:`vp_jax.evaluation.metrics.latent_bound`). ``replay`` with the episode's own draws
    (``rng`` that draws nothing new, e.g. ``since`` = T) returns the episode's objects exactly.
    """
    fresh = draw_hidden(rng, ep.version, len(ep.obj_radius), len(ep.positions))
    old = ep.hidden
    keep_friction = ep.seen < since
    hidden = Hidden(np.where(keep_friction, old.friction, fresh.friction))
    if ep.version >= 2:
        later = np.arange(len(ep.positions)) >= since - 1  # draws of the moves into frames >= since
        hidden.turn, hidden.heading, hidden.toggle = (np.where(later, f, o) for f, o in (
            (fresh.turn, old.turn), (fresh.heading, old.heading), (fresh.toggle, old.toggle)))
    return objects_under(ep, hidden)


def head(ep: Episode, num_frames: int) -> Episode:
    """The first ``num_frames`` frames of an episode (to render or replay only those)."""
    cut = {name: getattr(ep, name)[:num_frames] for name in ("positions", "actions", "opening", "obj_pos", "touched",
                                                             "moved", "noise")}
    h = ep.hidden
    hidden = h if h.turn is None else Hidden(h.friction, h.turn[:num_frames], h.heading[:num_frames], h.toggle[:num_frames])
    return dataclasses.replace(ep, **cut, hidden=hidden, seen=np.minimum(ep.seen, num_frames))


def replay_futures(spec: Spec, split: str, index: int, num: int, n_past: int, n_eval: int):
    """Sequence ``index`` of a set and ``num`` :func:`replay` s of it from frame ``n_past`` on:
    ``(truth uint8 [n_eval, 64, 64, 3], cond float32 [n_eval, 7], futures uint8 [num, n_eval - n_past, 64, 64, 3])``.

    The replays are drawn from a generator seeded by (seed, split, index), so they are the same
    on every call."""
    ep = head(simulate(sequence_rng(spec.seed, split, index), spec.num_frames, spec.version), n_eval)
    rng = np.random.default_rng([spec.seed, SPLIT_IDS[split], index, 7919])
    futures = np.stack([render(replay(ep, rng, n_past))[n_past:] for _ in range(num)])
    cond = np.concatenate([ep.actions, ep.positions], axis=1).astype(np.float32)
    return render(ep), cond, futures


def with_actions(ep: Episode, actions) -> Episode:
    """The episode replayed under other commands ``actions [T, 4]``: the true counterfactual.

    Same scene, same start position, same hidden draws and the same execution noise (the draws
    :func:`simulate` recorded); the gripper moves by ``STEP x (action + noise)`` clipped to the
    workspace, the finger opening of frame t+1 follows the gripper command of action t, and the
    objects move by the same physics. With ``actions = ep.actions`` this returns ``ep``'s
    trajectories exactly, so :func:`render` gives the same bytes. Actions are not clipped to
    [-1, 1]: a command outside the policy's range moves the gripper further.
    """
    actions = np.asarray(actions, np.float64)
    num_frames = len(ep.positions)
    if actions.shape != (num_frames, 4):
        raise DataError(f"with_actions: actions must have shape ({num_frames}, 4), got {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise DataError("with_actions: actions must be finite numbers")
    positions, opening = np.zeros_like(ep.positions), np.zeros_like(ep.opening)
    positions[0], opening[0] = ep.positions[0], ep.opening[0]
    for t in range(num_frames - 1):
        positions[t + 1] = np.clip(positions[t] + STEP * (actions[t, :3] + ep.noise[t]), GRIP_LO, GRIP_HI)
        opening[t + 1] = actions[t, 3]
    edited = dataclasses.replace(ep, positions=positions, actions=actions.copy(), opening=opening)
    return objects_under(edited, ep.hidden)


# ----------------------------------------------------------------------------- rendering

_ROWS, _COLS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # pixel centres


def world_to_pixel(x, y, z=0.0):
    """(column u, row v) where a point at height z is drawn: ground point raised by z * HEIGHT_PX."""
    return (np.asarray(y) - Y_MIN) * PX, (np.asarray(x) - X_MIN) * PX - np.asarray(z) * HEIGHT_PX


def _table(table: dict) -> np.ndarray:
    """Background [3, 64, 64] float32 (channels first): textured table top, dark rim at the edge."""
    base = _hsv_to_rgb(table["hue"], table["sat"], table["val"])
    a = table["grain_angle"]
    along = _COLS * math.cos(a) + _ROWS * math.sin(a)
    across = -_COLS * math.sin(a) + _ROWS * math.cos(a)
    grain = np.sin(table["grain_freq"] * across + table["grain_warp"] * np.sin(0.09 * along + table["phase"][0]))
    b = table["blotch"]
    blotch = b[0, 0] * np.sin(0.11 * _COLS + table["phase"][1]) * np.sin(0.13 * _ROWS + table["phase"][2])
    blotch += b[1, 1] * np.sin(0.05 * (_COLS + _ROWS) + table["phase"][3])
    noise = np.random.default_rng(table["noise_seed"]).normal(0, 0.012, (SIZE, SIZE)).astype(np.float32)
    shade = (1.0 + 0.035 * grain + blotch + noise).astype(np.float32)
    rim = int(round(RIM * PX))
    edge = np.zeros((SIZE, SIZE), bool)
    edge[:rim], edge[-rim:], edge[:, :rim], edge[:, -rim:] = True, True, True, True
    shade[edge] = 0.45
    return base[:, None, None] * shade[None]


def _object_sdf(shape: str, du, dv, r: float, angle: float):
    """Signed distance (pixels, approximate outside the disc) of an object centred at 0."""
    if shape == "disc":
        return np.sqrt(du * du + dv * dv) - r
    c, s = math.cos(angle), math.sin(angle)
    lu, lv = c * du + s * dv, -s * du + c * dv
    if shape == "square":
        return np.maximum(np.abs(lu), np.abs(lv)) - 0.8 * r
    # Equilateral triangle of circumradius 1.25 r: max over the three edge normals.
    d = None
    for k in range(3):
        th = 2 * np.pi * k / 3
        e = lu * math.cos(th) + lv * math.sin(th)
        d = e if d is None else np.maximum(d, e)
    return d - 0.62 * r


def _rgb(values) -> np.ndarray:
    """A colour as [3, 1, 1, 1] float32, to broadcast over channels-first images [3, T, H, W]."""
    return np.asarray(values, np.float32).reshape(3, 1, 1, 1)


def render(ep: Episode, debug: bool = False):
    """Frames uint8 [T, 64, 64, 3] of an episode.

    With ``debug`` returns a dict: ``frames``; ``gripper_mask`` bool [T, 64, 64] (gripper body
    pixels); ``arm_mask`` bool [T, 64, 64]; ``scene`` float32 [T, 64, 64, 3] (table + objects
    only, before the gripper, its shadow and the arm are drawn).
    """
    # Images are channels first [3, T, H, W] while drawing: numpy broadcasts a [T, H, W] alpha
    # over a leading channel axis ~20x faster than over a trailing axis of length 3.
    # Objects move in few frames: draw table + objects once per distinct object layout.
    layouts, frame_layout = np.unique(ep.obj_pos.reshape(len(ep.obj_pos), -1), axis=0, return_inverse=True)
    img = np.repeat(_table(ep.table)[:, None], len(layouts), axis=1)  # [3, L, H, W]
    rows, cols = _ROWS[None], _COLS[None]

    # Objects: soft drop shadows first, then the objects (anti-aliased by a 1-px alpha ramp).
    obj = layouts.reshape(len(layouts), -1, 2)
    ou, ov = world_to_pixel(obj[..., 0], obj[..., 1])  # [L, K]
    rads = ep.obj_radius * PX
    sdfs = []
    for k, shape in enumerate(ep.obj_shape):
        du = cols - ou[:, k, None, None].astype(np.float32)
        dv = rows - ov[:, k, None, None].astype(np.float32)
        sdfs.append((du, dv, _object_sdf(shape, du, dv, rads[k], ep.obj_angle[k])))
        shadow = _object_sdf(shape, du - 1.0, dv - 1.5, rads[k], ep.obj_angle[k])
        img *= 1.0 - 0.3 * np.clip(0.5 - shadow / 1.5, 0, 1)
    for k, (du, dv, sdf) in enumerate(sdfs):
        # Light from the top left: a gentle gradient gives the objects some volume.
        light = 1.0 + 0.12 * np.clip(-(du + dv) / (2 * rads[k]), -1, 1)
        alpha = np.clip(0.5 - sdf, 0, 1)
        img *= 1.0 - alpha
        img += _rgb(ep.obj_colour[k]) * (alpha * light)
    img = img[:, frame_layout.reshape(-1)]  # [3, T, H, W]
    scene = img.transpose(1, 2, 3, 0).copy() if debug else None

    x, y, z = (ep.positions[:, i, None, None].astype(np.float32) for i in range(3))
    scale = 1.0 + 1.2 * z

    # Gripper shadow at the ground point: larger, fainter and blurrier the higher the gripper.
    gu, gv = world_to_pixel(x, y)
    dist = np.sqrt((cols - gu) ** 2 + ((rows - gv) * 1.3) ** 2)
    soft = 1.0 + 10.0 * z
    keep = 1.0 - (0.5 - 1.2 * z) * np.clip((GRIP_RADIUS * PX * (1 + z) - dist) / soft + 0.5, 0, 1)

    # Arm: a capsule from the base above the image to the drawn gripper, shaded like a cylinder.
    hu, hv = world_to_pixel(x, y, z)
    bu, bv = BASE_UV
    su, sv = hu - bu, hv - bv
    h = np.clip(((cols - bu) * su + (rows - bv) * sv) / (su * su + sv * sv + 1e-6), 0, 1)
    d_arm = np.sqrt((cols - bu - h * su) ** 2 + (rows - bv - h * sv) ** 2)
    width = 3.2 * scale
    arm_alpha = np.clip(width - d_arm + 0.5, 0, 1)
    arm_light = 1.1 - 0.35 * np.clip(d_arm / width, 0, 1) ** 2

    # Gripper: dark body disc and two orange finger pads whose gap follows the opening.
    du, dv = cols - hu, rows - hv
    body_r = 4.5 * scale
    body_alpha = np.clip(body_r - np.sqrt(du * du + dv * dv) + 0.5, 0, 1)
    gap = body_r - 1.0 + 1.5 * ep.opening[:, None, None].astype(np.float32)
    pads = [
        np.clip(0.5 - np.maximum(np.abs(du - side * gap) - 1.3 * scale, np.abs(dv - 2.0 * scale) - 2.6 * scale), 0, 1)
        for side in (-1.0, 1.0)
    ]
    pad_alpha = np.maximum(pads[0], pads[1])  # the two pads never overlap

    # Shadow, arm, body, pads over the scene, in that order.
    img *= keep
    for alpha, colour in ((arm_alpha, None), (body_alpha, (0.16, 0.17, 0.22)), (pad_alpha, (0.98, 0.55, 0.12))):
        img *= 1.0 - alpha
        img += _rgb((0.62, 0.64, 0.7)) * (alpha * arm_light) if colour is None else _rgb(colour) * alpha
    img *= 255.0
    img += 0.5
    np.clip(img, 0, 255, out=img)
    frames = img.transpose(1, 2, 3, 0).astype(np.uint8, order="C")
    if not debug:
        return frames
    return dict(frames=frames, gripper_mask=body_alpha > 0.5, arm_mask=arm_alpha > 0.5, scene=scene)


def generate_sequence(seed: int, split: str, index: int, num_frames: int = NUM_FRAMES, version: int = VERSION,
                      debug: bool = False):
    """(frames uint8 [T, 64, 64, 3], cond float32 [T, 7], episode) of one sequence; see :func:`render`."""
    ep = simulate(sequence_rng(seed, split, index), num_frames, version)
    cond = np.concatenate([ep.actions, ep.positions], axis=1).astype(np.float32)
    return render(ep, debug=debug), cond, ep


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a pushbot set holds: sequences per split, the seed, the generator version, frames."""

    train: int = 1000
    validate: int = 256
    test: int = 256
    seed: int = 0
    version: int = VERSION
    num_frames: int = NUM_FRAMES

    def marker(self) -> dict:
        """The ``pushbot.json`` of the set."""
        counts = dict(train=self.train, validate=self.validate, test=self.test)
        return dict(generator="vp_jax.data.pushbot", version=self.version, seed=self.seed,
                    num_frames=self.num_frames, counts=counts)

    def check(self) -> "Spec":
        if min(self.train, self.validate, self.test) < 0:
            raise DataError(f"pushbot counts {self.marker()['counts']}: expected numbers >= 0")
        if self.version not in VERSIONS:
            raise DataError(f"pushbot version {self.version}: expected one of {VERSIONS}")
        if self.num_frames < 1:
            raise DataError(f"pushbot frames {self.num_frames}: expected >= 1")
        return self


def read_spec(root: str) -> Spec | None:
    """The :class:`Spec` of the complete set at ``root`` (from its marker), or None."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            m = json.load(f)
        return Spec(**m["counts"], seed=m["seed"], version=m["version"], num_frames=m["num_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sequence_dir(root: str, split: str, index: int) -> str:
    """``ROOT/<split>/pushbot_<split>_<chunk>/<index in chunk>``."""
    return os.path.join(root, split, f"pushbot_{split}_{index // CHUNK:03d}", str(index % CHUNK))


def _write_range(args) -> int:
    """Worker: write sequences [start, stop) of a split under root. Returns the count."""
    root, split, start, stop, spec = args
    for index in range(start, stop):
        ep = simulate(sequence_rng(spec.seed, split, index), spec.num_frames, spec.version)
        files = sequence_files(render(ep), ep.actions, ep.positions, number=lambda v: f"{v:.6f}")
        write_sequence(sequence_dir(root, split, index), files)
    return stop - start


def generate(root: str, spec: Spec = Spec(), workers: int | None = None) -> dict:
    """Write a complete pushbot set at ``root`` (which must not exist); return its marker dict.

    Written into a temporary sibling folder and renamed, so ``root`` appears only when complete.
    ``workers`` processes (default: 2 or the CPU count if smaller; 1 for small sets) share the work.
    """
    spec.check()
    counts = spec.marker()["counts"]
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder is ordinary data
    try:
        tasks = []
        for split, n in counts.items():
            os.makedirs(os.path.join(tmp, split))
            tasks += [(tmp, split, start, min(start + 32, n), spec) for start in range(0, n, 32)]
        total = sum(counts.values())
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if total >= 64 else 1
        if workers > 1:
            # 'spawn': the caller may have started JAX, whose threads make fork() unsafe.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                done = sum(pool.imap_unordered(_write_range, tasks))
        else:
            done = sum(map(_write_range, tasks))
        assert done == total
        marker = spec.marker()
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(marker, f, indent=2)
        try:
            os.rename(tmp, root)
        except OSError:
            # Someone else finished the same set first (or root appeared): keep theirs if it is it.
            if read_spec(root) != spec:
                raise DataError(f"{root}: exists already and is not this pushbot set; remove it or choose another --out")
        return marker
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_pushbot(root: str, spec: Spec = Spec()) -> bool:
    """Generate the pushbot set at ``root`` unless it is there already; True if it generated.

    An existing complete set (its ``pushbot.json`` marker) with other counts, seed or version, or
    a non-empty folder without the marker, is an error rather than silently reused or overwritten.
    """
    found = read_spec(root)
    if found is not None:
        if found != spec:
            diff = {k: (v, getattr(spec, k)) for k, v in dataclasses.asdict(found).items() if getattr(spec, k) != v}
            raise DataError(
                f"{os.path.join(root, MARKER)}: existing pushbot set differs from the config "
                f"(field: (found, wanted) {diff}); delete {root} or point data.root elsewhere"
            )
        return False
    if os.path.isdir(root):
        if os.listdir(root):
            raise DataError(f"{root}: exists but holds no {MARKER} (not a complete pushbot set); remove it or choose another root")
        os.rmdir(root)
    generate(root, spec)
    return True


def save_preview(path: str, spec: Spec = Spec(), split: str = "train", sequences: int = 4):
    """Write a PNG grid: one row per sequence, every third frame across (for a quick look)."""
    videos = [generate_sequence(spec.seed, split, i, spec.num_frames, spec.version)[0] for i in range(sequences)]
    iio.imwrite(path, contact_sheet(videos, tuple(range(0, spec.num_frames, 3))))


@cli_main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vp_jax.data.pushbot", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder (must not exist, or hold the same set)")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--validate", type=int, default=256)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, default=VERSION, help=f"generator version, one of {VERSIONS}")
    parser.add_argument("--frames", type=int, default=NUM_FRAMES, help="frames per sequence (the lab's: 30)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPUs))")
    parser.add_argument("--preview", metavar="PNG", help="write a grid of a few sequences to PNG and exit")
    args = parser.parse_args(argv)
    spec = Spec(args.train, args.validate, args.test, args.seed, args.version, args.frames).check()
    if args.preview:
        save_preview(args.preview, spec)
        print(f"wrote {args.preview}")
        return
    if not args.out:
        parser.error("--out is required (or --preview)")
    start = time.perf_counter()
    if read_spec(args.out) is not None:
        ensure_pushbot(args.out, spec)
        print(f"{args.out}: pushbot set already complete, nothing to do")
        return
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise DataError(f"{args.out}: exists and is not a pushbot set; remove it or choose another --out")
    if os.path.isdir(args.out):
        os.rmdir(args.out)
    generate(args.out, spec, args.workers)
    n = args.train + args.validate + args.test
    secs = time.perf_counter() - start
    print(f"wrote {n} sequences x {args.frames} frames to {args.out} in {secs:.1f} s ({n / secs:.0f} sequences/s)")


if __name__ == "__main__":
    main()
