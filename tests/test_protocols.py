"""Evaluation protocols: resolution and refusals, the protocol card's JSON round trip and signature,
compare's table per protocol. (eval.py with LPIPS, a longer horizon than training and the card:
tests/test_cli.py.)"""

import copy
import json
import os

import jax
import pytest

from vp_jax.config import load_config_file
from vp_jax.errors import ConfigError
from vp_jax.evaluation import protocols
from vp_jax.tools import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config():
    return load_config_file(os.path.join(ROOT, "configs", "tiny.py"))


def test_named_protocols_are_fixed_records(config):
    lab = protocols.resolve("lab", config)
    assert (lab.n_past, lab.n_future, lab.num_samples, lab.fvd) == (2, 10, 1, False)
    svg = protocols.resolve("svg", config)
    assert (svg.n_future, svg.num_samples) == (28, 100)
    with pytest.raises(ConfigError, match="--num_samples: the protocol 'svg' fixes it"):
        protocols.resolve("svg", config, num_samples=5)


def test_one_context_frame_needs_a_model_trained_with_one(config):
    with pytest.raises(ConfigError, match=r"needs a model trained with 1 context frame.*config.n_past = 2"):
        protocols.resolve("bair-1to15", config)
    one = config.copy_and_resolve_references()
    one.n_past = 1
    p = protocols.resolve("bair-1to15", one)
    assert (p.n_past, p.n_future, p.num_samples, p.lpips, p.fvd_repeats) == (1, 15, 100, ("alex",), 100)


def test_custom_takes_the_config_and_the_flags(config):
    p = protocols.resolve("custom", config)
    assert (p.n_past, p.n_future, p.num_samples, p.lpips, p.fvd) == (2, 3, 1, (), False)
    p = protocols.resolve("custom", config, predict_frames=8, num_samples=4, lpips=["vgg"], fvd=True, fvd_repeats=4)
    assert (p.n_future, p.num_samples, p.lpips, p.fvd, p.fvd_repeats) == (8, 4, ("vgg",), True, 4)
    with pytest.raises(ConfigError, match="--fvd_repeats 5: expected 1 .. num_samples"):
        protocols.resolve("custom", config, predict_frames=8, num_samples=4, fvd=True, fvd_repeats=5)
    with pytest.raises(ConfigError, match="5 frames; the I3D needs clips of at least 9"):
        protocols.resolve("custom", config, fvd=True)  # 2 + 3 frames
    with pytest.raises(ConfigError, match="expected one of"):
        protocols.resolve("custom", config, lpips=["squeeze"])


def _card(p, **kw):
    args = dict(split="test", num_sequences=256, bn_mode="inference", seed=1,
                checkpoint={"workdir": "/w", "name": "best", "step": 7})
    args.update(kw)
    return protocols.card(p, **args)


def test_card_round_trip_and_signature(config):
    one = config.copy_and_resolve_references()
    one.n_past = 1
    card = _card(protocols.resolve("bair-1to15", one), fvd_batch_size=8)
    back = json.loads(json.dumps(card, allow_nan=False))
    assert back == card and protocols.signature(back) == protocols.signature(card)
    assert card["context_frames"] == 1 and card["predicted_frames"] == 15 and card["samples_per_sequence"] == 100
    assert card["fvd"]["clip_frames"] == 16 and card["fvd"]["context_frames_included"] is True
    assert card["fvd"]["repeats"] == 100 and card["best_of_n"]["chosen_by"] == ["psnr", "ssim", "psnr_moving", "lpips_alex"]
    assert card["versions"]["jax"] == jax.__version__ and card["checkpoint"]["step"] == 7
    # another checkpoint, machine or FVD batch size: the same protocol; a field that changes the numbers: not
    other = copy.deepcopy(card)
    other.update(checkpoint={"workdir": "/x", "name": "latest", "step": 9}, versions={}, seed=5)
    other["fvd"]["batch_size"] = 2
    assert protocols.signature(other) == protocols.signature(card)
    for key, value in (("predicted_frames", 28), ("num_sequences", 64), ("split", "validate")):
        changed = dict(card, **{key: value})
        assert protocols.signature(changed) != protocols.signature(card)
        assert protocols.differing_fields([card, changed]) == [key]
    out = dict(card, fvd=dict(card["fvd"], context_frames_included=False))
    assert protocols.differing_fields([card, out]) == ["fvd"]


def _metrics(path, card, psnr):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        json.dump({"psnr": psnr, "ssim": 0.8, "baseline_copy_last": {"psnr": 20.0}, "protocol": card}, f)


def test_compare_never_puts_two_protocols_in_one_column(tmp_path, config):
    from tests.test_compare import _workdir

    a = _workdir(tmp_path, "a", "cyclical", [20.0, 21.0], 0.5)
    b = _workdir(tmp_path, "b", "monotonic", [19.0, 22.0], 0.4)
    lab = _card(protocols.resolve("lab", config))
    svg = _card(protocols.resolve("svg", config))
    _metrics(os.path.join(a, "eval", "test-lab"), lab, 25.0)
    _metrics(os.path.join(b, "eval", "test-lab"), dict(lab, checkpoint={"step": 3}), 26.0)  # same protocol
    _metrics(os.path.join(b, "eval", "test-svg"), svg, 18.0)
    _metrics(os.path.join(a, "eval", "old"), None, 24.0)  # written before protocol cards
    runs = [compare.load_run(a), compare.load_run(b)]
    tables = compare.evaluation_tables([e for r in runs for e in compare.load_evaluations(r)])
    assert len(tables) == 3
    by_heading = {h.split(":")[0]: t for h, t in tables}
    assert sorted(by_heading["protocol lab"]["psnr"]) == [25.0, 26.0]
    assert list(by_heading["protocol svg"]["psnr"]) == [18.0]
    assert list(by_heading["protocol no protocol card (evaluated before protocols were recorded)"]["psnr"]) == [24.0]
    svg_heading = next(h for h, _ in tables if h.startswith("protocol svg"))
    assert "predicted_frames" in svg_heading and "samples_per_sequence" in svg_heading


def test_default_batch_size_keeps_sequence_samples_per_call_bounded():
    from vp_jax.evaluation.evaluate import SEQUENCE_SAMPLES_PER_CALL, default_batch_size

    assert default_batch_size(32, 1) == 32  # one sample (the lab protocol): the config's batch
    assert default_batch_size(32, 100) == SEQUENCE_SAMPLES_PER_CALL // 100 == 2
    assert default_batch_size(32, 10) == 25
    assert default_batch_size(4, 1000) == 1  # never 0
    assert default_batch_size(32, 100, shards=4) == 4  # a multiple of the devices sharing a batch
    for samples in (1, 3, 10, 64, 100, 300):
        b = default_batch_size(32, samples)
        assert b * samples <= max(SEQUENCE_SAMPLES_PER_CALL, samples) and (b == 32 or (b + 1) * samples > SEQUENCE_SAMPLES_PER_CALL)
