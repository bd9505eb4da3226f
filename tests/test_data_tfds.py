"""TFDS bair_robot_pushing_small through tfds.data_source, under tfds.testing.mock_data (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from data_support import data_config

from vp_jax.data import cache
from vp_jax.data.pipeline import BatchIterator, open_split
from vp_jax.data.tfds_bair import TfdsBair, example_to_arrays
from vp_jax.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")

N = 6  # mock examples per TFDS split


@pytest.fixture
def mock():
    with tfds.testing.mock_data(num_examples=N):
        yield tfds.data_source("bair_robot_pushing_small", split="train"), tfds.data_source(
            "bair_robot_pushing_small", split="test"
        )


def test_splits_map_onto_tfds(mock):
    train, test = mock
    assert len(TfdsBair("", "train", validate_count=2)) == N - 2
    assert len(TfdsBair("", "validate", validate_count=2)) == 2
    assert len(TfdsBair("", "test", validate_count=2)) == N
    val = TfdsBair("", "validate", validate_count=2)
    f, c = val[0]
    np.testing.assert_array_equal(f, train[N - 2]["image_aux1"])  # validate = the end of TFDS train
    with pytest.raises(DataError, match="tfds_validate"):
        TfdsBair("", "train", validate_count=N)


def test_batches_match_the_lab_reader_and_carry_the_mock_values(mock, tmp_path):
    train_ds, _ = mock
    cfg = data_config("", source="tfds", tfds_validate=2)
    src = open_split(cfg, "train")
    assert src.frames.shape == (N - 2, 30, 64, 64, 3) and src.frames.dtype == np.uint8
    assert src.cond.shape == (N - 2, 30, 7) and src.cond.dtype == np.float32
    it = BatchIterator(src, 2, 12, seed=0)
    batch = next(it)
    it.close()

    lab_cfg = data_config(str(tmp_path / "pb"))
    lab_batch = next(BatchIterator(open_split(lab_cfg, "train"), 2, 12, seed=0, prefetch=0))
    assert set(batch) == set(lab_batch)
    for key in batch:
        assert batch[key].dtype == lab_batch[key].dtype and batch[key].shape == lab_batch[key].shape

    order, _ = it.epoch_plan(0)
    for k, i in enumerate(order[:2]):
        ex = train_ds[int(i)]
        np.testing.assert_array_equal(batch["frames"][k], ex["image_aux1"][:12])
        np.testing.assert_array_equal(batch["cond"][k, :, :4], ex["action"][:12])
        np.testing.assert_array_equal(batch["cond"][k, :, 4:], ex["endeffector_pos"][:12])


def test_camera_choice(mock):
    train_ds, _ = mock
    main = TfdsBair("", "test", camera="image_main")[1][0]
    aux = TfdsBair("", "test")[1][0]
    assert not np.array_equal(main, aux)
    with pytest.raises(DataError, match="camera"):
        TfdsBair("", "test", camera="image_side")


def test_tfds_cache_equals_direct_reads(mock, tmp_path):
    m = cache.build_cache("tfds", "", "test", str(tmp_path / "c"), cache.Reading(tfds_validate=2))
    assert m["count"] == N and m["camera"] == "image_aux1"
    frames, cond, _ = cache.open_cache(str(tmp_path / "c"))
    reader = TfdsBair("", "test")
    for i in range(N):
        f, c = reader[i]
        np.testing.assert_array_equal(frames[i], f)
        np.testing.assert_array_equal(cond[i], c)
    cfg = data_config("", source="tfds", cache_dir=str(tmp_path / "caches"), tfds_validate=2)
    src = open_split(cfg, "validate")
    assert isinstance(src.frames, np.memmap) and len(src) == 2


def test_list_of_frames_examples_are_stacked():
    """A real ArrayRecord read returns each sequence feature as a list of 30 per-step arrays."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(30)]
    actions = [rng.normal(size=4).astype(np.float32) for _ in range(30)]
    pos = [rng.normal(size=3).astype(np.float32) for _ in range(30)]
    ex = {"image_aux1": frames, "image_main": frames, "action": actions, "endeffector_pos": pos}
    f, c = example_to_arrays(ex)
    np.testing.assert_array_equal(f, np.stack(frames))
    np.testing.assert_array_equal(c, np.concatenate([np.stack(actions), np.stack(pos)], 1))
    ex["action"] = actions[:29]
    with pytest.raises(DataError, match="action"):
        example_to_arrays(ex)


def test_missing_arrayrecord_copy_is_one_line(tmp_path):
    with pytest.raises(DataError, match="tfds build bair_robot_pushing_small --file_format=array_record") as err:
        TfdsBair(str(tmp_path), "train")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
