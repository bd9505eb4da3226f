"""Pushbot generator: determinism, the picture follows the conditions, pushes obey contact."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from data_support import COUNTS, SEED, assert_one_line_error, make_pushbot, run_module

from vp_jax.data import pushbot
from vp_jax.data.lab_folders import LabFolders, read_csv
from vp_jax.errors import DataError


@pytest.fixture(scope="module")
def pb_root(tmp_path_factory):
    return make_pushbot(str(tmp_path_factory.mktemp("pb") / "set"))


def _all_files(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def test_layout_and_marker(pb_root):
    for split, n in COUNTS.items():
        folders = LabFolders(pb_root, split)
        assert len(folders) == n
        assert folders.paths[0].endswith(os.path.join(split, f"pushbot_{split}_000", "0"))
        files = sorted(os.listdir(folders.paths[0]))
        assert files == sorted([f"{t}.png" for t in range(30)] + ["actions.csv", "endeffector_positions.csv"])
    assert pushbot.read_spec(pb_root) == pushbot.Spec(**COUNTS, seed=SEED)


def test_same_seed_byte_identical_other_seed_and_split_differ(pb_root, tmp_path):
    again = make_pushbot(str(tmp_path / "again"))
    a, b = _all_files(pb_root), _all_files(again)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    # Two worker processes give the same bytes as one (each sequence has its own generator).
    two = str(tmp_path / "two")
    pushbot.generate(two, pushbot.Spec(**COUNTS, seed=SEED), workers=2)
    c = _all_files(two)
    assert all(a[k] == c[k] for k in a)
    other = make_pushbot(str(tmp_path / "other"), seed=SEED + 1)
    d = _all_files(other)
    assert sum(a[k] != d[k] for k in a if k.endswith(".png")) > 0.9 * sum(k.endswith(".png") for k in a)
    f_train, c_train, _ = pushbot.generate_sequence(SEED, "train", 0)
    f_test, c_test, _ = pushbot.generate_sequence(SEED, "test", 0)
    assert not np.array_equal(f_train, f_test) and not np.array_equal(c_train, c_test)


def test_csvs_hold_the_executed_positions_and_commands(pb_root):
    _, _, ep = pushbot.generate_sequence(SEED, "train", 3)
    seq = os.path.join(pb_root, "train", "pushbot_train_000", "3")
    np.testing.assert_allclose(read_csv(os.path.join(seq, "endeffector_positions.csv"), 30, 3), ep.positions, atol=1e-6)
    np.testing.assert_allclose(read_csv(os.path.join(seq, "actions.csv"), 30, 4), ep.actions, atol=1e-6)
    # Executed motion = 0.05 * (action + small noise), except where the workspace clips it.
    step = np.diff(ep.positions, axis=0) / pushbot.STEP
    inside = np.all((ep.positions[1:] > pushbot.GRIP_LO + 1e-9) & (ep.positions[1:] < pushbot.GRIP_HI - 1e-9), axis=1)
    assert np.abs(step - ep.actions[:-1, :3])[inside].max() < 0.3


def test_ranges_and_most_sequences_push():
    eps = [pushbot.simulate(pushbot.sequence_rng(0, "train", i)) for i in range(60)]
    pos = np.concatenate([e.positions for e in eps])
    act = np.concatenate([e.actions for e in eps])
    assert pos.min() >= -0.3 and pos.max() <= 0.9
    assert act.min() >= -1 and act.max() <= 1
    assert np.mean([e.touched.any() for e in eps]) >= 0.7
    # The gripper moves fast: several pixels a frame on average.
    speed = np.linalg.norm(np.diff(pos.reshape(60, 30, 3)[..., :2], axis=1), axis=-1) * pushbot.PX
    assert speed.mean() > 2.0


def test_version_1_objects_move_only_when_the_low_gripper_touches_them():
    for i in range(60):
        ep = pushbot.simulate(pushbot.sequence_rng(1, "train", i), version=1)
        moved = np.any(ep.obj_pos[1:] != ep.obj_pos[:-1], axis=-1)  # [T-1, K]
        np.testing.assert_array_equal(moved, ep.moved[1:])
        contact = ep.touched[1:].any(axis=1)
        assert not moved[~contact].any(), f"sequence {i}: an object moved without contact"
        assert (ep.positions[1:, 2][contact] < pushbot.Z_CONTACT).all()
        _assert_on_the_table(ep)


def _assert_on_the_table(ep):
    lo = np.array([pushbot.X_MIN, pushbot.Y_MIN]) + pushbot.RIM
    hi = np.array([pushbot.X_MAX, pushbot.Y_MAX]) - pushbot.RIM
    assert (ep.obj_pos - ep.obj_radius[None, :, None] >= lo - 1e-9).all()
    assert (ep.obj_pos + ep.obj_radius[None, :, None] <= hi + 1e-9).all()


def test_version_1_is_the_set_of_earlier_releases():
    """The simulation of version 1 is what the generator wrote before version 2 existed (the
    digest of 12 episodes' trajectories and scenes, recorded with that generator)."""
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "test"):
        for i in range(6):
            ep = pushbot.simulate(pushbot.sequence_rng(0, split, i), version=1)
            for a in (ep.positions, ep.actions, ep.opening, ep.obj_pos, ep.touched, ep.moved, ep.obj_radius, ep.obj_colour):
                h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest() == "c2d0a0cc985d369cc80ebad5469ce56e2a510c18c7c45d3f80e8c3568ff21d80"


def test_version_2_pushes_early_objects_slide_on_and_one_moves_by_itself():
    eps = [pushbot.simulate(pushbot.sequence_rng(SEED, "test", i)) for i in range(40)]
    # Most sequences push within the first frames, so the outcome shows in frames 2..11.
    assert np.mean([e.touched[1:6].any() for e in eps]) > 0.7
    slid, wandered = 0, 0
    for e in eps:
        _assert_on_the_table(e)
        contact = e.touched.any(axis=1)
        for k in range(len(e.obj_radius)):
            moving = e.moved[:, k]
            if k == e.wanderer:
                wandered += moving[~contact].sum() >= 5  # it moves without being touched
            elif e.touched[:, k].any():
                last = int(np.nonzero(e.touched[:, k])[0][-1])
                slid += moving[last + 1 :].any()  # momentum: on after the last touch
    assert wandered >= 24 and slid >= 20, (wandered, slid)


def test_replay_keeps_the_context_and_the_conditions_and_draws_another_future():
    changed = 0
    for i in range(16):
        ep = pushbot.simulate(pushbot.sequence_rng(SEED, "train", i))
        frames = pushbot.render(ep)
        same = pushbot.replay(ep, np.random.default_rng(i), since=len(frames) + 1)  # nothing left to redraw
        for name in ("obj_pos", "touched", "moved", "positions", "actions", "opening"):
            np.testing.assert_array_equal(getattr(same, name), getattr(ep, name), err_msg=name)
        for since in (1, 2, 4):
            other = pushbot.replay(ep, np.random.default_rng([i, since]), since)
            np.testing.assert_array_equal(other.positions, ep.positions)
            np.testing.assert_array_equal(other.actions, ep.actions)
            replayed = pushbot.render(other)
            np.testing.assert_array_equal(replayed[:since], frames[:since], err_msg=f"sequence {i}, since {since}")
            changed += not np.array_equal(replayed[since : since + 10], frames[since : since + 10])
    assert changed >= 40  # of 48: the future is left open in nearly every sequence


def test_lower_friction_slides_further():
    """The hidden friction is what a replay redraws: the first pushed object of a replay with
    less friction ends up further from where it started."""
    further = 0
    for i in range(20):
        ep = pushbot.simulate(pushbot.sequence_rng(SEED, "train", i))
        touched = [k for k in range(len(ep.obj_radius)) if ep.touched[:, k].any() and k != ep.wanderer]
        if not touched:
            continue
        k = touched[0]
        runs = []
        for mu in pushbot.FRICTION:
            hidden = dataclasses.replace(ep.hidden, friction=np.full(len(ep.obj_radius), mu))
            runs.append(pushbot.objects_under(ep, hidden).obj_pos[-1, k] - ep.obj_pos[0, k])
        further += np.hypot(*runs[0]) > np.hypot(*runs[1]) + 0.01
    assert further >= 10


def test_pixels_of_the_scene_change_only_where_objects_move():
    for version in pushbot.VERSIONS:
        for i in range(4):
            ep = pushbot.simulate(pushbot.sequence_rng(SEED, "train", i), version=version)
            out = pushbot.render(ep, debug=True)
            changed = np.any(out["scene"][1:] != out["scene"][:-1], axis=(1, 2, 3))
            np.testing.assert_array_equal(changed, ep.moved[1:].any(axis=1))
            np.testing.assert_array_equal(out["frames"], pushbot.render(ep))


def test_gripper_is_drawn_where_the_positions_say():
    centroids, expected, areas, heights = [], [], [], []
    for i in range(6):
        ep = pushbot.simulate(pushbot.sequence_rng(SEED, "validate", i))
        mask = pushbot.render(ep, debug=True)["gripper_mask"]
        u, v = pushbot.world_to_pixel(ep.positions[:, 0], ep.positions[:, 1], ep.positions[:, 2])
        for t in range(len(mask)):
            inside = 8 < u[t] < 56 and 8 < v[t] < 56  # the whole body is in the image
            if inside:
                rows, cols = np.nonzero(mask[t])
                centroids.append((cols.mean() + 0.5, rows.mean() + 0.5))
                expected.append((u[t], v[t]))
                areas.append(mask[t].sum())
                heights.append(ep.positions[t, 2])
    centroids, expected = np.array(centroids), np.array(expected)
    assert len(centroids) > 60
    assert np.abs(centroids - expected).max() < 0.75  # pixels
    # Columns follow y, rows follow x; height shows as size.
    assert np.corrcoef(areas, heights)[0, 1] > 0.9


def test_gripper_moves_with_xy_of_the_csv(pb_root):
    """The gripper is the part of the picture that the positions drive: pixels change along its path."""
    folders = LabFolders(pb_root, "train")
    frames, cond = folders[0]
    u, v = pushbot.world_to_pixel(cond[:, 4], cond[:, 5], cond[:, 6])
    for t in range(1, 30):
        diff = np.abs(frames[t].astype(int) - frames[t - 1].astype(int)).sum(-1) > 30
        if np.hypot(u[t] - u[t - 1], v[t] - v[t - 1]) > 2 and 6 < u[t] < 58 and 6 < v[t] < 58:
            r, c = int(v[t]), int(u[t])
            assert diff[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5].any(), t


def test_ensure_pushbot(tmp_path, pb_root, monkeypatch):
    root = str(tmp_path / "pb")
    assert pushbot.ensure_pushbot(root, pushbot.Spec(**COUNTS, seed=SEED)) is True
    marker = os.path.join(root, pushbot.MARKER)
    mtime = os.path.getmtime(marker)
    assert pushbot.ensure_pushbot(root, pushbot.Spec(**COUNTS, seed=SEED)) is False
    assert os.path.getmtime(marker) == mtime
    with pytest.raises(DataError, match="pushbot.json"):
        pushbot.ensure_pushbot(root, pushbot.Spec(**COUNTS, seed=SEED + 1))
    # An interrupted generation leaves nothing that looks like a set.
    broken = str(tmp_path / "broken")

    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pushbot, "_write_range", boom)
    with pytest.raises(KeyboardInterrupt):
        pushbot.ensure_pushbot(broken, pushbot.Spec(**COUNTS, seed=SEED))
    assert not os.path.exists(broken)
    assert [e for e in os.listdir(tmp_path) if e.startswith(".broken")] == []
    # A non-empty folder without the marker is refused.
    os.makedirs(broken)
    open(os.path.join(broken, "x"), "w").close()
    with pytest.raises(DataError, match="broken"):
        pushbot.ensure_pushbot(broken, pushbot.Spec(**COUNTS, seed=SEED))


def test_png_encoder_round_trips():
    import imageio.v3 as iio

    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(iio.imread(pushbot.encode_png(img), extension=".png"), img)


def test_cli_generates_and_refuses_a_foreign_folder(tmp_path):
    out = str(tmp_path / "cli")
    proc = run_module("vp_jax.data.pushbot", "--out", out, "--train", "2", "--validate", "1", "--test", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(LabFolders(out, "test")) == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = run_module("vp_jax.data.pushbot", "--out", str(foreign), "--train", "2")
    assert_one_line_error(proc, str(foreign))
