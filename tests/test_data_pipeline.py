"""open_split (cache on first use) and BatchIterator (order, offsets, restore, eval mode)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from data_support import data_config

from vp_jax.data import pipeline
from vp_jax.data.lab_folders import LabFolders
from vp_jax.data.pipeline import BatchIterator, Sampling, SequenceSource, condition_stats, eval_batches, open_split
from vp_jax.errors import DataError


@pytest.fixture(scope="module")
def pb_cfg(tmp_path_factory):
    """config.data for a tiny pushbot set that open_split generates and caches itself."""
    return data_config(str(tmp_path_factory.mktemp("pipe") / "pushbot"))


@pytest.fixture(scope="module")
def train(pb_cfg):
    return open_split(pb_cfg, "train")


def small_source(n=11, s=6, seed=0):
    """In-memory source whose pixels encode (sequence, frame), to check what lands where."""
    frames = np.zeros((n, s, 64, 64, 3), np.uint8)
    frames[..., 0] = np.arange(n)[:, None, None, None]
    frames[..., 1] = np.arange(s)[None, :, None, None]
    cond = np.random.default_rng(seed).normal(size=(n, s, 7)).astype(np.float32)
    return SequenceSource(frames, cond, name="mem")


def ids(batch):
    """(sequence ids [B], first frame [B]) read back from small_source pixels."""
    f = np.asarray(batch["frames"])
    return f[:, 0, 0, 0, 0].astype(int), f[:, 0, 0, 0, 1].astype(int)


def test_open_split_generates_caches_and_reuses(pb_cfg, train):
    root = pb_cfg.root
    cache_dir = os.path.join(root, ".cache", "train")
    assert os.path.isfile(os.path.join(root, "pushbot.json"))
    assert isinstance(train.frames, np.memmap) and train.frames.shape == (10, 30, 64, 64, 3)
    assert train.cond.dtype == np.float32 and train.cond.shape == (10, 30, 7) and len(train) == 10
    folders = LabFolders(root, "train")
    for i in (0, 9):
        f, c = folders[i]
        np.testing.assert_array_equal(train.frames[i], f)
        np.testing.assert_array_equal(train.cond[i], c)
    mtime = os.path.getmtime(os.path.join(cache_dir, "manifest.json"))
    again = open_split(pb_cfg, "train")
    assert os.path.getmtime(os.path.join(cache_dir, "manifest.json")) == mtime
    np.testing.assert_array_equal(again.frames[3], train.frames[3])


def test_cache_dir_and_foreign_cache(pb_cfg, tmp_path):
    cfg = data_config(pb_cfg.root, cache_dir=str(tmp_path / "caches"))
    src = open_split(cfg, "test")
    assert os.path.isfile(tmp_path / "caches" / "pushbot-test" / "manifest.json") and len(src) == 3
    # A cache built from other data is refused rather than silently used.
    manifest = tmp_path / "caches" / "pushbot-test" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["root"] = "/somewhere/else"
    manifest.write_text(json.dumps(m))
    with pytest.raises(DataError, match="manifest.json: cache built from"):
        open_split(cfg, "test")


def test_skip_bad_through_open_split(pb_cfg, tmp_path):
    import shutil

    root = str(tmp_path / "lab")
    shutil.copytree(pb_cfg.root, root, ignore=shutil.ignore_patterns(".cache"))
    seq = LabFolders(root, "validate").paths[1]
    with open(os.path.join(seq, "actions.csv"), "w") as f:
        f.write("1,2,3\n")
    strict = data_config(root, source="lab")
    with pytest.raises(DataError, match="actions.csv"):
        open_split(strict, "validate")
    lenient = data_config(root, source="lab", skip_bad=True)
    src = open_split(lenient, "validate")
    assert len(src) == 2 and src.skipped == 1
    with pytest.raises(DataError, match="1 bad sequences were skipped"):  # the same cache, strict config
        open_split(strict, "validate")


def test_batches_structure_and_first_frames(train):
    it = BatchIterator(train, 4, 12, seed=1)
    batch = next(it)
    assert set(batch) == {"frames", "cond"}
    assert batch["frames"].dtype == np.uint8 and batch["frames"].shape == (4, 12, 64, 64, 3)
    assert batch["cond"].dtype == np.float32 and batch["cond"].shape == (4, 12, 7)
    order, offsets = it.epoch_plan(0)
    assert (offsets == 0).all()
    for k, i in enumerate(order[:4]):
        np.testing.assert_array_equal(batch["frames"][k], train.frames[i, :12])
        np.testing.assert_array_equal(batch["cond"][k], train.cond[i, :12])
    it.close()


def test_epochs_shuffle_and_drop_remainder():
    src = small_source(n=11)
    it = BatchIterator(src, 4, 3, seed=5, prefetch=0)
    assert it.steps_per_epoch == 2
    seen = [ids(next(it))[0] for _ in range(4)]
    e0, e1 = np.concatenate(seen[:2]), np.concatenate(seen[2:])
    assert len(set(e0)) == 8 and len(set(e1)) == 8  # each sequence at most once per epoch
    assert not np.array_equal(e0, e1)  # reshuffled
    same = BatchIterator(src, 4, 3, seed=5, prefetch=2)
    assert all(np.array_equal(ids(next(same))[0], s) for s in seen)  # deterministic, prefetch or not
    other = BatchIterator(src, 4, 3, seed=6, prefetch=0)
    assert not np.array_equal(ids(next(other))[0], seen[0])
    ordered = BatchIterator(src, 4, 3, seed=5, sampling=Sampling(shuffle=False), prefetch=0)
    assert list(ids(next(ordered))[0]) == [0, 1, 2, 3]


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("random_offset", [False, True])
def test_restored_iterator_yields_the_same_batches(prefetch, random_offset):
    src = small_source(n=11, s=6)
    kw = dict(seed=3, sampling=Sampling(random_offset=random_offset), prefetch=prefetch)
    a = BatchIterator(src, 3, 4, **kw)
    for _ in range(5):  # into the second epoch (3 batches per epoch)
        next(a)
    state = a.get_state()
    assert state == {"epoch": 1, "position": 2}
    json.dumps(state)  # plain ints: goes into a checkpoint as is
    expected = [next(a) for _ in range(6)]
    b = BatchIterator(src, 3, 4, **kw)
    next(b)  # a used iterator (with a running prefetch thread) can be rewound too
    b.set_state(state)
    got = [next(b) for _ in range(6)]
    for x, y in zip(expected, got):
        np.testing.assert_array_equal(x["frames"], y["frames"])
        np.testing.assert_array_equal(x["cond"], y["cond"])
    a.close()
    b.close()
    with pytest.raises(DataError, match="position"):
        b.set_state({"epoch": 0, "position": 99})


def test_random_offset_windows():
    src = small_source(n=11, s=9)
    it = BatchIterator(src, 11, 4, seed=0, sampling=Sampling(random_offset=True), prefetch=0)
    starts = []
    for epoch in range(3):
        batch = next(it)
        seq, first = ids(batch)
        order, offsets = it.epoch_plan(epoch)
        np.testing.assert_array_equal(seq, order)
        np.testing.assert_array_equal(first, offsets)
        np.testing.assert_array_equal(batch["frames"][:, :, 0, 0, 1], offsets[:, None] + np.arange(4))
        np.testing.assert_array_equal(batch["cond"], np.stack([src.cond[i, o : o + 4] for i, o in zip(order, offsets)]))
        starts.append(first)
    allstarts = np.concatenate(starts)
    assert allstarts.min() >= 0 and allstarts.max() <= 5 and len(set(allstarts)) > 3


def test_eval_mode_visits_everything_once_in_order():
    src = small_source(n=11)
    batches = list(eval_batches(src, 4, 5, sampling=Sampling(shuffle=False, drop_remainder=False)))
    assert [len(b["frames"]) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([ids(b)[0] for b in batches]), np.arange(11))
    assert (np.concatenate([ids(b)[1] for b in batches]) == 0).all()
    padded = list(eval_batches(src, 4, 5, prefetch=0))
    assert [len(b["frames"]) for b in padded] == [4, 4, 4]
    assert padded[-1]["mask"].tolist() == [True, True, True, False] and padded[0]["mask"].all()
    np.testing.assert_array_equal(ids(padded[-1])[0], [8, 9, 10, 10])


def test_condition_standardisation(train):
    stats = condition_stats(train)
    assert stats["mean"].shape == (7,) and stats["std"].dtype == np.float32
    batches = list(eval_batches(train, 4, 30, cond_stats=stats, sampling=Sampling(shuffle=False, drop_remainder=False)))
    cond = np.concatenate([b["cond"] for b in batches]).reshape(-1, 7)
    np.testing.assert_allclose(cond.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(cond.std(0), 1, atol=1e-3)
    raw = next(BatchIterator(train, 4, 30, seed=0, prefetch=0))
    std = next(BatchIterator(train, 4, 30, seed=0, prefetch=0, cond_stats=stats))
    np.testing.assert_allclose(std["cond"], (raw["cond"] - stats["mean"]) / stats["std"], rtol=1e-5, atol=1e-5)


def test_bad_iterator_arguments(train):
    with pytest.raises(DataError, match="30 frames"):
        BatchIterator(train, 4, 31, seed=0)
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchIterator(train, 64, 12, seed=0)


def test_errors_in_the_prefetch_thread_reach_the_caller():
    src = small_source(n=8)

    class Broken:
        shape = src.frames.shape

        def __len__(self):
            return 8

        def __getitem__(self, key):
            raise DataError("frames: broken on purpose")

    it = BatchIterator(SequenceSource(Broken(), src.cond, name="broken"), 4, 3, seed=0, prefetch=2)
    with pytest.raises(DataError, match="broken on purpose"):
        next(it)


def test_dropped_iterator_stops_its_thread():
    import gc
    import threading

    before = sum(t.name == "vp_jax-prefetch" for t in threading.enumerate())
    it = BatchIterator(small_source(n=8), 2, 3, seed=0, prefetch=2)
    next(it)
    del it
    gc.collect()
    for _ in range(50):
        if sum(t.name == "vp_jax-prefetch" for t in threading.enumerate()) == before:
            break
        threading.Event().wait(0.02)
    assert sum(t.name == "vp_jax-prefetch" for t in threading.enumerate()) == before


def test_cache_path_defaults(pb_cfg):
    assert pipeline.cache_path(pb_cfg, "test") == os.path.join(pb_cfg.root, ".cache", "test")
    tfds_cfg = data_config("/data/tfds", source="tfds")
    assert pipeline.cache_path(tfds_cfg, "train") == ""
    tfds_cfg.cache_dir = "/c"
    assert pipeline.cache_path(tfds_cfg, "train") == "/c/tfds-image_aux1-train"


def test_open_split_checks_seq_len(pb_cfg):
    cfg = data_config(pb_cfg.root, seq_len=31)
    with pytest.raises(DataError, match="seq_len = 31"):
        open_split(cfg, "test")
