"""vp_jax.Predictor and python -m vp_jax.tools.whatif on a tiny workdir (the tiny model's initial
weights, a tiny pushbot set, conditions standardised): the predictor's frames are evaluation's,
bad inputs are refused in one line, an unchanged edit reproduces the unedited prediction, the
pushbot re-simulation reproduces the data set, and CSV edits are read or refused in one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_support import COUNTS, SEED, assert_one_line_error, make_pushbot, run_module

from vp_jax.config import run_config, save_config_json
from vp_jax.data import pushbot
from vp_jax.data.pipeline import condition_stats, open_split
from vp_jax.errors import DataError, VPError
from vp_jax.store.checkpoints import CheckpointStore
from vp_jax.store.state import TrainState, make_optimizer
from vp_jax.tools import whatif


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_config, tiny_variables):
    """A workdir as train.py leaves it: config.json and one checkpoint (the tiny model at init)."""
    root = tmp_path_factory.mktemp("whatif")
    data = make_pushbot(str(root / "pushbot"))
    config = tiny_config.copy_and_resolve_references()
    config.data.root = data
    config.data.pushbot = dict(seed=SEED, **COUNTS)
    config.data.normalize_condition = True
    wd = str(root / "run")
    os.makedirs(wd)
    save_config_json(config, os.path.join(wd, "config.json"))
    tx = make_optimizer(run_config(config).train)
    params = tiny_variables["params"]
    # Nudge the weights so the conditions visibly steer the output of the untrained model.
    params = jax.tree.map(lambda p: p * 3.0, params)
    state = TrainState(step=jnp.asarray(5, jnp.int32), params=params, batch_stats=tiny_variables["batch_stats"],
                       opt_state=tx.init(params), tx=tx)
    with CheckpointStore(wd, keep=1) as store:
        store.save(5, state, {"epoch": 1})
    return wd


@pytest.fixture(scope="module")
def predictor(workdir):
    """One sequence per call: the program compiled here serves every test below."""
    from vp_jax import Predictor

    return Predictor.from_workdir(workdir, batch_size=1)


def test_predictor_gives_evaluations_frames(predictor):
    """The same checkpoint, key and sequences per call: the frames evaluation scores, bit for bit
    (call i draws from fold_in(key, i) in both); the conditions standardised with the training
    split's statistics, as evaluation does."""
    from vp_jax.evaluation.scoring import Options, SplitScorer

    config = predictor.run
    source = open_split(config.data, "test")
    stats = condition_stats(open_split(config.data, "train"))
    np.testing.assert_array_equal(predictor.cond_stats["mean"], stats["mean"])
    key = jax.random.key(11)
    scorer = SplitScorer(config, Options(batch_size=1, keep_predictions=True), cond_stats=stats, mesh=None)
    scores = scorer(predictor, source, key)
    frames = predictor.predict(source.frames[:, : config.n_past], source.cond[:, : config.n_eval], key=key)
    assert frames.dtype == np.uint8 and frames.shape == (len(source), 1, config.n_eval - config.n_past, 64, 64, 3)
    np.testing.assert_array_equal(frames[:, 0], scores["pred"])
    # Raw conditions go in: standardising them beforehand gives other frames; another key, other frames.
    other = predictor.predict(source.frames[:, : config.n_past], predictor.standardize(source.cond[:, : config.n_eval]),
                              key=key)
    assert not np.array_equal(other, frames)
    assert not np.array_equal(predictor.predict(source.frames[:1, :2], source.cond[:1, :5], key=12), frames[:1])


def _context(predictor, n=1):
    return np.zeros((n, predictor.n_past, 64, 64, 3), np.uint8)


def _cond(predictor, n=1, frames=5):
    return np.zeros((n, frames, predictor.cond_dim), np.float32)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: (np.zeros((1, 3, 64, 64, 3), np.uint8), _cond(p)), "context_frames of shape (1, 3, 64, 64, 3)"),
        (lambda p: (np.zeros((1, 2, 32, 32, 3), np.uint8), _cond(p)), "expected [N, 2, 64, 64, 3]"),
        (lambda p: (np.full((1, 2, 64, 64, 3), 255.0, np.float32), _cond(p)), "float values in [255, 255]; expected [0, 1]"),
        (lambda p: (np.zeros((1, 2, 64, 64, 3), np.int32), _cond(p)), "dtype int32"),
        (lambda p: (_context(p), _cond(p, frames=2)), "cover 2 frames; need the 2 context frames plus at least one"),
        (lambda p: (_context(p), np.zeros((1, 5, 4), np.float32)), "4 numbers a frame; the model takes 7"),
        (lambda p: (_context(p), _cond(p, n=2)), "expected [1, 2 + T, 7]"),
        (lambda p: (_context(p), np.full((1, 5, 7), np.nan, np.float32)), "NaN or inf"),
    ],
)
def test_bad_inputs_are_refused_in_one_line(predictor, make, needle):
    frames, cond = make(predictor)
    with pytest.raises(VPError) as err:
        predictor.predict(frames, cond)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_horizon_must_agree_with_the_conditions(predictor):
    with pytest.raises(DataError, match=r"horizon=4 needs 2 \+ 4 = 6"):
        predictor.predict(_context(predictor), _cond(predictor), horizon=4)
    with pytest.raises(VPError, match="num_samples = 0"):
        predictor.predict(_context(predictor), _cond(predictor), num_samples=0)


@pytest.fixture(scope="module")
def whatif_run(workdir, predictor, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("whatif_out"))
    edits = [whatif.Edit("scale", 1.0), whatif.Edit("scale", 0.0), whatif.Edit("zero", 3), whatif.Edit("from_sequence", 2)]
    report = whatif.run(whatif.Query(workdir, 1, tuple(edits), split="test", out=out), predictor=predictor)
    return report, dict(np.load(os.path.join(out, "whatif.npz"))), out


def test_scale_one_reproduces_the_unedited_prediction(whatif_run, predictor):
    report, arrays, out = whatif_run
    names = [e["name"] for e in report["edits"]]
    assert names == ["unedited", "scale 1", "scale 0", "zero gripper", "actions of sequence 2"]
    np.testing.assert_array_equal(arrays["cond"][1], arrays["cond"][0])
    np.testing.assert_array_equal(arrays["pred"][1], arrays["pred"][0])
    unedited, scale1 = report["edits"][0], report["edits"][1]
    assert scale1["mean_pixel_change"] == 0.0 and scale1["psnr_vs_truth"] == unedited["psnr_vs_truth"]
    assert report["edits"][2]["mean_pixel_change"] > 0  # the conditions reach the frames
    # The unedited prediction is the predictor's, on the stored frames and conditions.
    source = open_split(predictor.run.data, "test")
    direct = predictor.predict(source.frames[1:2, :2], source.cond[1:2, :5])[0, 0]
    np.testing.assert_array_equal(arrays["pred"][0], direct)
    with open(os.path.join(out, "whatif.json")) as f:
        assert json.load(f)["edits"] == report["edits"]
    assert sorted(os.listdir(out)) == ["whatif.gif", "whatif.json", "whatif.npz", "whatif.png"]  # no leftovers


def test_edits_change_only_the_actions_they_name(whatif_run):
    report, arrays, _ = whatif_run
    cond, n_past = arrays["cond"], report["n_past"]
    source_cond = cond[0]
    np.testing.assert_array_equal(cond[:, : n_past - 1, :4], np.broadcast_to(source_cond[: n_past - 1, :4], cond[:, : n_past - 1, :4].shape))
    np.testing.assert_array_equal(cond[:, :n_past, 4:], np.broadcast_to(source_cond[:n_past, 4:], cond[:, :n_past, 4:].shape))
    assert np.all(cond[2, n_past - 1 :, :3] == 0) and np.array_equal(cond[2, :, 3], source_cond[:, 3])  # scale 0
    assert np.all(cond[3, n_past - 1 :, 3] == 0) and np.array_equal(cond[3, :, :3], source_cond[:, :3])  # zero gripper
    # scale 0: the gripper moves only by the execution noise (pushbot's dynamics, re-simulated)
    steps = np.diff(cond[2, n_past - 1 :, 4:7], axis=0)
    assert np.max(np.abs(steps)) < 4 * pushbot.STEP * pushbot.ACTION_NOISE


def test_pushbot_counterfactual_of_the_unedited_actions_is_the_data(whatif_run, predictor):
    report, arrays, _ = whatif_run
    assert report["true_counterfactual"]
    np.testing.assert_array_equal(arrays["counterfactual"][0], arrays["truth"])
    np.testing.assert_array_equal(arrays["counterfactual"][1], arrays["truth"])
    assert report["edits"][0]["counterfactual_psnr_vs_truth"] == pytest.approx(100.0, abs=1e-4)  # identical frames: the cap
    assert not np.array_equal(arrays["counterfactual"][2], arrays["truth"])  # the gripper stopped
    first = report["n_past"]
    np.testing.assert_array_equal(arrays["counterfactual"][2][:first], arrays["truth"][:first])


def test_with_actions_replays_and_round_trips():
    """Unedited actions: every trajectory and every frame byte for byte; edited from step k on:
    frames up to k unchanged; edited and edited back: the original episode."""
    ep = pushbot.simulate(pushbot.sequence_rng(SEED, "test", 0), 12)
    same = pushbot.with_actions(ep, ep.actions)
    for name in ("positions", "opening", "obj_pos", "touched", "moved"):
        np.testing.assert_array_equal(getattr(same, name), getattr(ep, name))
    frames = pushbot.render(ep)
    np.testing.assert_array_equal(pushbot.render(same), frames)
    edited_actions = ep.actions.copy()
    edited_actions[4:, :3] = -ep.actions[4:, :3]
    edited = pushbot.with_actions(ep, edited_actions)
    np.testing.assert_array_equal(pushbot.render(edited)[:5], frames[:5])
    assert not np.array_equal(edited.positions[5:], ep.positions[5:])
    back = pushbot.with_actions(edited, ep.actions)
    np.testing.assert_array_equal(pushbot.render(back), frames)
    with pytest.raises(DataError, match=r"shape \(12, 4\)"):
        pushbot.with_actions(ep, ep.actions[:5])


def test_approximate_positions_in_closed_form():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (2, 9, 4))
    positions = np.cumsum(np.concatenate([rng.uniform(size=(2, 1, 3)), 0.05 * actions[:, :-1, :3]], axis=1), axis=1)
    gain = whatif.position_gain(np.concatenate([actions, positions], axis=-1))
    np.testing.assert_allclose(gain, [0.05, 0.05, 0.05], rtol=1e-9)
    new = actions[0].copy()
    new[3:, 0] += 1.0  # one more unit of dx from step 3 on
    moved = whatif.approximate_positions(actions[0], positions[0], new, gain, n_past=4)
    np.testing.assert_allclose(moved[:4], positions[0][:4], atol=0)
    np.testing.assert_allclose(moved[4:, 0] - positions[0][4:, 0], 0.05 * np.arange(1, 6), atol=1e-12)
    np.testing.assert_allclose(moved[:, 1:], positions[0][:, 1:], atol=1e-12)


def test_actions_csv_forms(tmp_path):
    rows = np.round(np.random.default_rng(1).uniform(-1, 1, (6, 7)), 4)
    plain = tmp_path / "actions.csv"  # a data set's actions.csv as it is
    plain.write_text("\n".join(",".join(f"{v:.4f}" for v in r[:4]) for r in rows) + "\n")
    actions, positions = whatif.read_actions_csv(str(plain), 5)
    np.testing.assert_array_equal(actions, rows[:5, :4])
    assert positions is None
    named = tmp_path / "named.csv"  # a header, columns in any order
    named.write_text("z,gripper,dx,y,dy,x,dz\n" + "\n".join(
        ",".join(f"{r[i]:.4f}" for i in (6, 3, 0, 5, 1, 4, 2)) for r in rows) + "\n")
    actions, positions = whatif.read_actions_csv(str(named), 6)
    np.testing.assert_array_equal(actions, rows[:, :4])
    np.testing.assert_array_equal(positions, rows[:, 4:])


@pytest.mark.parametrize(
    "text, needle",
    [
        ("1,2,3\n" * 6, "3 columns"),
        ("1,2,3,4\n" * 3, "3 rows"),
        ("1,2,3,4\n1,2,x,4\n" + "1,2,3,4\n" * 4, "row 2, column 3: 'x' is not a finite number"),
        ("1,2,3,nan\n" * 6, "row 1, column 4"),
        ("dx,dy,dz,grip\n" + "1,2,3,4\n" * 6, "header dx,dy,dz,grip"),
        ("", "empty"),
    ],
)
def test_bad_csv_is_one_line_naming_the_file(tmp_path, text, needle):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        whatif.read_actions_csv(str(path), 5)
    message = str(err.value)
    assert message.startswith(str(path)) and needle in message and "expected a CSV" in message and "\n" not in message


def test_cli_refuses_a_bad_csv_and_a_missing_edit(workdir, tmp_path):
    bad = tmp_path / "short.csv"
    bad.write_text("0,0,0,1\n")
    proc = run_module("vp_jax.tools.whatif", "--workdir", workdir, "--sequence", "0", "--actions", str(bad))
    assert_one_line_error(proc, str(bad), "1 rows", "at least 5")
    proc = run_module("vp_jax.tools.whatif", "--workdir", workdir, "--sequence", "0")
    assert_one_line_error(proc, "no edit given")
    proc = run_module("vp_jax.tools.whatif", "--workdir", workdir, "--sequence", "0", "--zero", "7")
    assert_one_line_error(proc, "--zero 7")


def test_a_sequence_that_is_not_the_generators_has_no_counterfactual(predictor):
    """A stored sequence whose conditions are not the generator's (one action altered): whatif
    falls back to approximate positions instead of scoring against a wrong counterfactual."""
    config = predictor.run
    source = open_split(config.data, "test")
    cond = np.array(source.cond[1])
    cond[0, 0] += 0.5
    ep, reason = whatif.pushbot_episode(config, "test", 1, source.frames[1], cond)
    assert ep is None and "not the generator's sequence 1" in reason
    ep, reason = whatif.pushbot_episode(config, "test", 1, source.frames[1], source.cond[1])
    assert ep is not None and reason == ""
