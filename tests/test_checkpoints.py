"""CheckpointStore in-process: what is saved comes back bit for bit, as the arrays a fresh
state has (uncommitted jax Arrays of the same dtypes), under the checksum stored beside it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vp_jax.config import model_config, run_config
from vp_jax.store import checkpoints
from vp_jax.store.checkpoints import CheckpointStore, host_copy, state_digest
from vp_jax.store.state import TrainState, make_optimizer


@pytest.fixture()
def state(tiny_config, tiny_variables):
    """A tiny TrainState whose Adam moments are not all zero (one update applied)."""
    tx = make_optimizer(run_config(tiny_config).train)
    params = tiny_variables["params"]
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    opt_state = tx.init(params)
    _, opt_state = tx.update(grads, opt_state, params)
    return TrainState(step=jnp.asarray(7, jnp.int32), params=params, batch_stats=tiny_variables["batch_stats"],
                      opt_state=opt_state, tx=tx)


def _leaves(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_saved_state_restores_bit_for_bit(tmp_path, tiny_config, state):
    cfg = model_config(tiny_config)
    later = state.replace(step=jnp.asarray(8, jnp.int32), params=jax.tree.map(lambda p: p * 2, state.params))
    with CheckpointStore(str(tmp_path), keep=2) as store:
        store.save(7, state, {"epoch": 1}, val_psnr=20.0)
        store.save(8, later, {"epoch": 2}, val_psnr=19.0)  # worse: not a new best
        assert store.steps() == [7, 8]
        for which, expected in (("latest", later), ("best", state), (7, state)):
            restored, meta = store.restore(which, state, cfg)
            assert meta["state_sha256"] == state_digest(expected) == state_digest(restored)
            got, want = _leaves(restored), _leaves(expected)
            assert got.keys() == want.keys()
            for k, v in want.items():
                assert isinstance(got[k], jax.Array) and not got[k].committed, k
                assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
                assert np.asarray(got[k]).tobytes() == np.asarray(v).tobytes(), k
    assert int(restored.step) == 7


def test_host_copy_is_numpy_with_the_same_digest(state):
    host = host_copy(state)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
    assert jax.tree.structure(host) == jax.tree.structure(state)
    assert state_digest(host) == state_digest(state)


def test_host_copy_leaves_a_tree_of_remote_shards_to_orbax(monkeypatch):
    """A leaf that is not fully addressable (multi-host) cannot be gathered here: the tree is
    passed on unchanged (orbax writes each process's shards), and no digest is computed."""

    class RemoteShards:
        is_fully_addressable = False

    tree = {"local": jnp.ones(3), "remote": RemoteShards()}
    monkeypatch.setattr(checkpoints.jax, "device_get", lambda _: pytest.fail("gathered a remote array"))
    assert host_copy(tree) is tree
    monkeypatch.undo()
    assert state_digest(tree) is None


def test_save_leaves_no_temporary_folder(tmp_path, state):
    with CheckpointStore(str(tmp_path), keep=1) as store:
        for step in (1, 2, 3):
            store.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), {"epoch": step})
    assert sorted(os.listdir(os.path.join(str(tmp_path), "checkpoints"))) == ["3"]


def test_damaged_files_are_refused_before_orbax_reads_them(tmp_path, tiny_config, state, monkeypatch):
    """Every file of a saved checkpoint is in its manifest; a changed or missing file is refused
    by name without a single orbax read (a failed orbax read abandons sibling reads that report
    themselves on stderr later). A checkpoint without a manifest (an older version's) restores."""
    with CheckpointStore(str(tmp_path)) as store:
        store.save(3, state, {"epoch": 1})
        step_dir = os.path.join(store.root, "3")
        manifest = json.load(open(os.path.join(step_dir, checkpoints.MANIFEST)))
        on_disk = {os.path.relpath(os.path.join(d, n), step_dir) for d, _, ns in os.walk(step_dir) for n in ns}
        assert set(manifest) == on_disk - {checkpoints.MANIFEST} and any(k.startswith("state/") for k in manifest)
        assert checkpoints.damaged_files(step_dir) is None

        reads = []
        real_restore = store._manager.restore
        monkeypatch.setattr(store._manager, "restore", lambda *a, **k: reads.append(a) or real_restore(*a, **k))
        victim = max(manifest, key=lambda k: os.path.getsize(os.path.join(step_dir, k)))
        with open(os.path.join(step_dir, victim), "r+b") as f:
            f.seek(os.path.getsize(os.path.join(step_dir, victim)) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(checkpoints.DamagedCheckpointError, match=f"differ from the checksums.*{victim}"):
            store.restore("latest", state, model_config(tiny_config))
        assert reads == []
        os.remove(os.path.join(step_dir, victim))
        with pytest.raises(checkpoints.DamagedCheckpointError, match="1 file.s. missing"):
            store.restore("latest", state, model_config(tiny_config))
        assert reads == []

        store.save(4, state, {"epoch": 2})
        os.remove(os.path.join(store.root, "4", checkpoints.MANIFEST))
        restored, meta = store.restore(4, state, model_config(tiny_config))
        assert meta["epoch"] == 2 and len(reads) == 2  # meta, then state
        for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _at(state, step: int):
    """``state`` as saved at ``step``: its step and parameters shifted by ``step``."""
    return state.replace(step=jnp.asarray(step, jnp.int32), params=jax.tree.map(lambda p: p + step, state.params))


def _same_bits(a, b) -> bool:
    return state_digest(a) == state_digest(b)


def _folders(root: str) -> list:
    return sorted(os.listdir(root), key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else d))


def test_best_outlives_the_latest_window_and_each_state_is_written_once(tmp_path, tiny_config, state, monkeypatch):
    """keep=2: the best validated step stays after the latest two have moved past it, also in a
    reopened store (its metric is on disk), and restore('best') returns it; a step saved without
    validation (None, NaN) is kept only while among the latest. Every save writes one folder, the
    state once."""
    cfg = model_config(tiny_config)
    psnr = {1: 20.0, 2: 25.0, 3: 21.0, 4: None, 5: 22.0, 6: float("nan")}
    expected = {1: [1], 2: [1, 2], 3: [2, 3], 4: [2, 3, 4], 5: [2, 4, 5], 6: [2, 5, 6]}
    with CheckpointStore(str(tmp_path), keep=2) as store:
        writes = []
        real_save = store._manager.save
        monkeypatch.setattr(store._manager, "save", lambda *a, **k: writes.append(a) or real_save(*a, **k))
        for step, value in psnr.items():
            store.save(step, _at(state, step), {"epoch": step, "val_psnr": value}, val_psnr=value)
            assert store.steps() == expected[step] and _folders(store.root) == [str(s) for s in expected[step]]
        assert len(writes) == len(psnr)
        assert sum(name == "state" for _, dirs, _ in os.walk(store.root) for name in dirs) == 3
        assert store.best_step() == 2 and store.latest_step() == 6
    for read_only in (True, False):
        with CheckpointStore(str(tmp_path), keep=2, read_only=read_only) as store:
            assert store.steps() == [2, 5, 6] and store.best_step() == 2
            restored, meta = store.restore("best", state, cfg)
            validated = [v for v in psnr.values() if v is not None and v == v]
            assert _same_bits(restored, _at(state, 2)) and meta["val_psnr"] == max(validated)
    with CheckpointStore(str(tmp_path), keep=2) as store:
        store.save(7, _at(state, 7), {"epoch": 7}, val_psnr=19.0)
        assert store.steps() == [2, 6, 7] and store.best_step() == 2
        store.save(8, _at(state, 8), {"epoch": 8}, val_psnr=30.0)  # a new best: the old one goes
        assert store.steps() == [7, 8] and store.best_step() == 8
        assert _same_bits(store.restore("best", state, cfg)[0], _at(state, 8))


def test_best_falls_back_to_the_latest_without_validation(tmp_path, tiny_config, state):
    with CheckpointStore(str(tmp_path), keep=2) as store:
        for step in (1, 2, 3):
            store.save(step, _at(state, step), {"epoch": step})
        assert store.best_step() is None and store.steps() == [2, 3]
        restored, _ = store.restore("best", state, model_config(tiny_config))
        assert _same_bits(restored, _at(state, 3))


def test_a_step_saved_again_after_a_crash_replaces_the_first(tmp_path, tiny_config, state):
    with CheckpointStore(str(tmp_path), keep=2) as store:
        store.save(3, _at(state, 3), {"epoch": 1}, val_psnr=20.0)
        store.save(3, _at(state, 4), {"epoch": 1}, val_psnr=21.0)
        restored, meta = store.restore("best", state, model_config(tiny_config))
        assert store.steps() == [3] and store.best_step() == 3 and _same_bits(restored, _at(state, 4))
        assert checkpoints.damaged_files(os.path.join(store.root, "3")) is None


def test_a_damaged_best_is_refused_then_replaced(tmp_path, tiny_config, state, logged):
    """A damaged best checkpoint: restore('best') refuses it by path; resuming takes the newest
    intact step without touching it; the next validated save moves it to checkpoints/damaged/ with
    one warning, and the best intact step takes its place. A best whose metric file is damaged
    (orbax reads every metric when it opens) is refused by a reader, moved aside by a writer."""
    from data_support import flip_a_byte

    cfg = model_config(tiny_config)
    with CheckpointStore(str(tmp_path), keep=1) as store:
        for step, value in ((1, 25.0), (2, 20.0), (3, 21.0)):
            store.save(step, _at(state, step), {"epoch": step}, val_psnr=value)
        assert store.steps() == [1, 3] and store.best_step() == 1
    flip_a_byte(os.path.join(str(tmp_path), "checkpoints", "1"))
    with CheckpointStore(str(tmp_path), keep=1) as store:
        with pytest.raises(checkpoints.DamagedCheckpointError, match="checkpoints/1: damaged checkpoint"):
            store.restore("best", state, cfg)
        restored, _ = store.restore_for_resume(state, cfg)
        assert _same_bits(restored, _at(state, 3)) and logged == []
        store.save(4, _at(state, 4), {"epoch": 4}, val_psnr=19.0)
        assert len(logged) == 1 and logged[0].startswith("warning: ") and "checkpoints/1: damaged best checkpoint" in logged[0], logged
        assert os.path.isdir(os.path.join(store.root, "damaged", "1"))
        assert store.steps() == [3, 4] and store.best_step() == 3
        assert _same_bits(store.restore("best", state, cfg)[0], _at(state, 3))

    with open(os.path.join(str(tmp_path), "checkpoints", "3", "metrics", "metrics"), "w") as f:
        f.write('{"val_ps')
    with pytest.raises(checkpoints.DamagedCheckpointError, match="checkpoints/3: damaged checkpoint .metrics unreadable"):
        CheckpointStore(str(tmp_path), read_only=True)
    logged.clear()
    with CheckpointStore(str(tmp_path), keep=1) as store:
        assert store.steps() == [4] and store.best_step() == 4
    assert len(logged) == 1 and "checkpoints/3: damaged checkpoint (metrics unreadable" in logged[0], logged
    assert os.path.isdir(os.path.join(str(tmp_path), "checkpoints", "damaged", "3"))
