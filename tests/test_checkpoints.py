"""CheckpointStore in-process: what is saved comes back bit for bit, as the arrays a fresh
state has (uncommitted jax Arrays of the same dtypes), under the checksum stored beside it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vp_jax.config import model_config, run_config
from vp_jax.training import checkpoints
from vp_jax.training.checkpoints import CheckpointStore, host_copy, state_digest
from vp_jax.training.state import TrainState, make_optimizer


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
    latest = os.path.join(str(tmp_path), "checkpoints", "latest")
    assert sorted(os.listdir(latest)) == ["3"]


def test_damaged_files_are_refused_before_orbax_reads_them(tmp_path, tiny_config, state, monkeypatch):
    """Every file of a saved checkpoint is in its manifest; a changed or missing file is refused
    by name without a single orbax read (a failed orbax read abandons sibling reads that report
    themselves on stderr later). A checkpoint without a manifest (an older version's) restores."""
    with CheckpointStore(str(tmp_path)) as store:
        store.save(3, state, {"epoch": 1})
        step_dir = os.path.join(store.root, "latest", "3")
        manifest = json.load(open(os.path.join(step_dir, checkpoints.MANIFEST)))
        on_disk = {os.path.relpath(os.path.join(d, n), step_dir) for d, _, ns in os.walk(step_dir) for n in ns}
        assert set(manifest) == on_disk - {checkpoints.MANIFEST} and any(k.startswith("state/") for k in manifest)
        assert checkpoints.damaged_files(step_dir) is None

        reads = []
        real_restore = store._latest.restore
        monkeypatch.setattr(store._latest, "restore", lambda *a, **k: reads.append(a) or real_restore(*a, **k))
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
        os.remove(os.path.join(store.root, "latest", "4", checkpoints.MANIFEST))
        restored, meta = store.restore(4, state, model_config(tiny_config))
        assert meta["epoch"] == 2 and len(reads) == 2  # meta, then state
        for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
