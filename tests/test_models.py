"""Networks: exact parameter counts, BatchNorm over time, the PyTorch LSTM cell, initialisation."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vp_jax.config import ModelConfig, load_config_file, model_config
from vp_jax.models import (
    BatchNorm,
    ConditionalVAE,
    Encoder,
    GaussianLSTM,
    LSTMStack,
    TorchLSTMCell,
    VGGLayer,
    reparameterize,
)
from vp_jax.models.kernels import upsample_nearest_2x
from vp_jax.tools.summary import parameter_counts

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# Counted by instantiating the PyTorch modules of the lab / SVG (spec §2).
LAB = {
    "encoder": 8_689_600,
    "decoder": 11_822_659,
    "frame_predictor": 1_137_024,
    "posterior": 592_256,
    "prior": 592_256,
}


@pytest.mark.parametrize(
    "name,total,modules",
    [
        ("lab_bair.py", 22_833_795, LAB),
        ("lab_bair_fixed_prior.py", 22_241_539, {k: v for k, v in LAB.items() if k != "prior"}),
        # SVG-LP BAIR: no condition (199 -> 192 inputs: -1,792) and no BN head (-256)
        ("svg_bair.py", 22_831_747, dict(LAB, frame_predictor=1_137_024 - 1_792 - 256)),
    ],
)
def test_parameter_counts_match_pytorch(name, total, modules):
    counts = parameter_counts(model_config(load_config_file(os.path.join(CONFIGS, name))))
    assert counts.pop("total") == total
    assert counts == modules


def test_single_lstm_bias_drops_4096_parameters():
    # 4 cells (2 predictor + posterior + prior) x 4 gates x 256 hidden biases
    cfg = dataclasses.replace(ModelConfig(), torch_lstm_biases=False)
    assert parameter_counts(cfg)["total"] == 22_833_795 - 4_096


# --------------------------------------------------------------------------- BatchNorm


def bn_apply(variables, x, train, time_axis=None):
    return BatchNorm().apply(variables, x, train=train, time_axis=time_axis, mutable=["batch_stats"])


def torch_bn_reference(x, scale, bias, mean, var, momentum=0.1, eps=1e-5):
    """PyTorch BatchNorm in training mode on [N..., F]: (output, new running mean, new running var)."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    m, v = flat.mean(0), flat.var(0)
    n = flat.shape[0]
    y = (x - m) / np.sqrt(v + eps) * scale + bias
    return y, (1 - momentum) * mean + momentum * m, (1 - momentum) * var + momentum * v * n / (n - 1)


def perturbed_bn(features, key):
    """A BatchNorm with non-trivial running statistics (so the update rule is visible)."""
    variables = BatchNorm().init(key, jnp.zeros((2, features)), train=True)
    k1, k2 = jax.random.split(key)
    stats = {"mean": jax.random.normal(k1, (features,)), "var": 1.0 + jax.random.uniform(k2, (features,))}
    return {"params": variables["params"], "batch_stats": stats}


def test_batchnorm_matches_pytorch_training_and_inference():
    key = jax.random.PRNGKey(1)
    variables = perturbed_bn(5, key)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(2), (4, 6, 6, 5))
    y, new = bn_apply(variables, x, train=True)
    p, s = variables["params"], variables["batch_stats"]
    ref = [np.asarray(a) for a in (x, p["scale"], p["bias"], s["mean"], s["var"])]
    ry, rmean, rvar = torch_bn_reference(*ref)
    np.testing.assert_allclose(y, ry, atol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["mean"], rmean, atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var"], rvar, rtol=1e-6)  # unbiased, as PyTorch
    # inference: running statistics, nothing updated
    y_inf, unchanged = bn_apply(variables, x, train=False)
    np.testing.assert_allclose(y_inf, (x - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"], atol=1e-5)
    np.testing.assert_array_equal(unchanged["batch_stats"]["mean"], s["mean"])


def test_batchnorm_init_does_not_update_running_stats():
    variables = BatchNorm().init(jax.random.PRNGKey(0), 5.0 + jnp.arange(24.0).reshape(4, 6), train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(6))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(6))


def test_batchnorm_time_axis_equals_one_call_per_step_in_order():
    variables = perturbed_bn(3, jax.random.PRNGKey(3))
    # per-step means and scales differ, so pooled statistics would be visibly wrong
    steps = jnp.arange(4.0)[None, :, None, None, None]
    x = steps * 2.0 + (1.0 + steps) * jax.random.normal(jax.random.PRNGKey(4), (3, 4, 5, 5, 3))
    y, new = bn_apply(variables, x, train=True, time_axis=1)

    stats = variables["batch_stats"]
    for t in range(4):  # what the original does: one BatchNorm call per frame
        y_t, upd = bn_apply({"params": variables["params"], "batch_stats": stats}, x[:, t], train=True)
        stats = upd["batch_stats"]
        np.testing.assert_allclose(y[:, t], y_t, atol=1e-5)
    np.testing.assert_allclose(new["batch_stats"]["mean"], stats["mean"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new["batch_stats"]["var"], stats["var"], rtol=1e-6)

    # time-major input with time_axis=0 is the same computation
    y_tm, new_tm = bn_apply(variables, jnp.swapaxes(x, 0, 1), train=True, time_axis=0)
    np.testing.assert_allclose(jnp.swapaxes(y_tm, 0, 1), y, atol=1e-6)
    np.testing.assert_allclose(new_tm["batch_stats"]["var"], new["batch_stats"]["var"], rtol=1e-6)

    # pooling all B*T frames in one call is *not* the same (spec §3)
    y_pooled, _ = bn_apply(variables, x, train=True)
    assert float(jnp.max(jnp.abs(y_pooled - y))) > 0.1


# --------------------------------------------------------------------------- LSTM


def test_torch_lstm_cell_gate_layout_and_two_biases():
    hidden, inp, batch = 6, 5, 3
    cell = TorchLSTMCell(hidden, torch_biases=True)
    k = jax.random.split(jax.random.PRNGKey(5), 4)
    x = jax.random.normal(k[0], (batch, inp))
    c0, h0 = jax.random.normal(k[1], (batch, hidden)), jax.random.normal(k[2], (batch, hidden))
    params = cell.init(k[3], (c0, h0), x)["params"]
    # non-zero distinct biases so a missing or misplaced bias is visible
    params = jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size, params)
    (c1, h1), out = cell.apply({"params": params}, (c0, h0), x)

    # torch.nn.LSTMCell: gates = x W_ih^T + b_ih + h W_hh^T + b_hh, chunks (i, f, g, o)
    p = jax.tree.map(np.asarray, params)
    gates = np.asarray(x) @ p["ih"]["kernel"] + p["ih"]["bias"] + np.asarray(h0) @ p["hh"]["kernel"] + p["hh"]["bias"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    c_ref = sig(f) * np.asarray(c0) + sig(i) * np.tanh(g)
    h_ref = sig(o) * np.tanh(c_ref)
    np.testing.assert_allclose(c1, c_ref, atol=1e-5)
    np.testing.assert_allclose(h1, h_ref, atol=1e-5)
    np.testing.assert_array_equal(out, h1)

    single = TorchLSTMCell(hidden, torch_biases=False).init(k[3], (c0, h0), x)["params"]
    assert "bias" not in single["hh"] and "bias" in single["ih"]


def test_lstm_init_is_pytorch_uniform():
    hidden = 256
    carry = (jnp.zeros((1, hidden)),) * 2
    params = TorchLSTMCell(hidden).init(jax.random.PRNGKey(0), carry, jnp.zeros((1, 64)))["params"]
    w = np.concatenate([np.ravel(a) for a in jax.tree.leaves(params)])
    bound = 1 / np.sqrt(hidden)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)  # U(-b, b) has std b/sqrt(3)


def test_conv_linear_and_batchnorm_init():
    vgg = VGGLayer(64).init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 64)), train=True)["params"]
    kernel = np.asarray(vgg["conv"]["kernel"])  # 3*3*64*64 = 36,864 draws
    assert abs(kernel.mean()) < 1e-3
    np.testing.assert_allclose(kernel.std(), 0.02, rtol=0.03)
    np.testing.assert_array_equal(vgg["conv"]["bias"], 0.0)
    scale = np.asarray(vgg["bn"]["scale"])
    assert abs(scale.mean() - 1.0) < 0.01 and 0.01 < scale.std() < 0.03
    np.testing.assert_array_equal(vgg["bn"]["bias"], 0.0)

    lstm = LSTMStack(256, 1, out_features=128).init(
        jax.random.PRNGKey(1), ((jnp.zeros((1, 256)),) * 2,), jnp.zeros((1, 199)), train=True
    )["params"]
    for name in ("embed", "head"):
        np.testing.assert_allclose(np.std(lstm[name]["kernel"]), 0.02, rtol=0.05)
        np.testing.assert_array_equal(lstm[name]["bias"], 0.0)


# --------------------------------------------------------------------------- Gaussian LSTM


def test_reparameterized_sample_mean_and_variance():
    mu = jnp.array([0.5, -2.0, 3.0])
    logvar = jnp.array([0.0, np.log(0.25), np.log(4.0)])
    z = jax.vmap(lambda k: reparameterize(k, mu, logvar))(jax.random.split(jax.random.PRNGKey(0), 100_000))
    np.testing.assert_allclose(z.mean(0), mu, atol=0.02)
    np.testing.assert_allclose(z.var(0), np.exp(logvar), rtol=0.02)


def test_gaussian_lstm_samples_with_its_key():
    net = GaussianLSTM(8, 1, z_dim=3)
    state = ((jnp.zeros((2, 8)),) * 2,)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
    variables = net.init(jax.random.PRNGKey(0), state, x)
    _, z, mu, logvar = net.apply(variables, state, x, jax.random.PRNGKey(7))
    np.testing.assert_allclose(z, reparameterize(jax.random.PRNGKey(7), mu, logvar), atol=1e-6)
    _, z2, _, _ = net.apply(variables, state, x, jax.random.PRNGKey(8))
    assert not np.allclose(z, z2)
    _, none, _, _ = net.apply(variables, state, x)
    assert none is None


# --------------------------------------------------------------------------- VGG-64


def test_upsample_is_nearest_neighbour():
    x = jnp.arange(2 * 3 * 4 * 2.0).reshape(2, 3, 4, 2)
    expected = np.kron(np.asarray(x), np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(upsample_nearest_2x(x), expected)


def test_encoder_time_axis_equals_per_frame_calls(tiny_variables):
    enc = Encoder(widths=(4, 4, 8, 8), g_dim=8)  # the tiny model's encoder
    params = tiny_variables["params"]["encoder"]
    apply = jax.jit(
        lambda stats, x: enc.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    )
    # the two frames have different statistics, so pooled BatchNorm statistics would differ
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 2, 64, 64, 3)) * jnp.array([1.0, 0.3])[None, :, None, None, None]
    stats = tiny_variables["batch_stats"]["encoder"]
    (h, skips), new = apply(stats, x)
    assert h.shape == (3, 2, 8) and [s.shape[2:] for s in skips] == [(64, 64, 4), (32, 32, 4), (16, 16, 8), (8, 8, 8)]
    assert float(jnp.max(jnp.abs(h))) < 1.0
    for t in range(2):
        (h_t, skips_t), upd = apply(stats, x[:, t])
        stats = upd["batch_stats"]
        np.testing.assert_allclose(h[:, t], h_t, rtol=1e-4, atol=1e-4)  # conv batch B*T vs B: summation order
        for s, s_t in zip(skips, skips_t):
            np.testing.assert_allclose(s[:, t], s_t, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new["batch_stats"], stats)


def test_decoder_uses_its_skips_and_outputs_probabilities(tiny_config, tiny_variables, fast_jit):
    model = ConditionalVAE(model_config(tiny_config))
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))

    # training-mode BatchNorm: in inference mode a fresh model's signals shrink to nothing
    def encode(x):
        return model.apply(tiny_variables, x, True, method=ConditionalVAE.encode, mutable=["batch_stats"])[0]

    def decode(h, skips):
        return model.apply(tiny_variables, h, skips, True, method=ConditionalVAE.decode, mutable=["batch_stats"])[0]

    decode = fast_jit(decode)
    h, skips = fast_jit(encode)(x)
    out = decode(h, skips)
    assert out.dtype == jnp.float32 and float(out.min()) > 0.0 and float(out.max()) < 1.0
    for k in range(4):  # every skip reaches the output
        noise = jax.random.normal(jax.random.PRNGKey(k), skips[k].shape)
        other = tuple(s if i != k else s + noise for i, s in enumerate(skips))
        assert float(jnp.max(jnp.abs(decode(h, other) - out))) > 1e-3


def test_fixed_prior_has_no_prior_network(tiny_config):
    cfg = dataclasses.replace(model_config(tiny_config), learned_prior=False)
    from vp_jax.models import abstract_variables

    assert "prior" not in abstract_variables(cfg)["params"]
    model = ConditionalVAE(cfg)
    variables = {"params": {}, "batch_stats": {}}
    h = jnp.zeros((4, cfg.g_dim))
    state, z, mu, logvar = model.apply(variables, (), h, jax.random.PRNGKey(0), method=ConditionalVAE.infer_prior)
    assert state == () and z.shape == (4, cfg.z_dim)
    np.testing.assert_array_equal(mu, 0.0)
    np.testing.assert_array_equal(logvar, 0.0)
    np.testing.assert_allclose(z, jax.random.normal(jax.random.PRNGKey(0), (4, cfg.z_dim)))


# ----------------------------------------------------------------------------- decoder pathways


def test_condition_field_is_an_mlp_of_pixel_coordinates_and_condition():
    from vp_jax.models.condition import ConditionField, pixel_grid

    field = ConditionField(channels=3, hidden=5)
    cond = jax.random.normal(jax.random.PRNGKey(0), (2, 7))
    variables = field.init(jax.random.PRNGKey(1), cond, 8)
    out = np.asarray(field.apply(variables, cond, 8))
    assert out.shape == (2, 8, 8, 3)
    p = jax.tree.map(np.asarray, variables["params"])
    grid = np.asarray(pixel_grid(8))
    assert grid[0, 0].tolist() == pytest.approx([-0.875, -0.875]) and grid[2, 5].tolist() == pytest.approx([0.375, -0.375])
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    for b in range(2):
        for r, c in ((0, 0), (3, 6), (7, 2)):
            x = np.asarray(cond[b], np.float64)
            h = relu(x @ p["cond"]["kernel"] + p["cond"]["bias"] + grid[r, c] @ p["coords"]["kernel"])
            h = relu(h @ p["hidden"]["kernel"] + p["hidden"]["bias"])
            np.testing.assert_allclose(out[b, r, c], h @ p["out"]["kernel"] + p["out"]["bias"], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def pathway_model(tiny_config):
    """The tiny model with both decoder pathways, its variables and one encoded batch."""
    from vp_jax.models import init_variables

    cfg = dataclasses.replace(model_config(tiny_config), decoder_cond=4, output="composite")
    variables = init_variables(cfg, jax.random.PRNGKey(0))
    model = ConditionalVAE(cfg)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
    (h, skips), _ = model.apply(variables, x, True, method=ConditionalVAE.encode, mutable=["batch_stats"])
    cond = jax.random.normal(jax.random.PRNGKey(2), (2, cfg.cond_dim))
    return cfg, model, variables, x, h, skips, cond


def _decode(model, variables, h, skips, cond):
    return model.apply(variables, h, skips, True, cond, method=ConditionalVAE.decode, mutable=["batch_stats"])[0]


def test_composite_output_copies_the_skip_frame_where_the_mask_is_closed(pathway_model):
    cfg, model, variables, x, h, skips, cond = pathway_model
    np.testing.assert_array_equal(skips[0], x)  # the skip frame's pixels travel first among the skips
    out_conv = variables["params"]["decoder"]["upc5_out"]
    assert out_conv["kernel"].shape[-1] == 4  # RGB + mask logit
    for logit, expected in ((-40.0, "copy"), (40.0, "paint")):
        bias = out_conv["bias"].at[3].set(logit)
        params = jax.tree.map(lambda a: a, variables["params"])
        params["decoder"]["upc5_out"] = dict(out_conv, bias=bias)
        out = _decode(model, dict(variables, params=params), h, skips, cond)
        if expected == "copy":
            np.testing.assert_allclose(out, x, atol=1e-6)  # nothing painted: the skip frame itself
        else:
            other = _decode(model, dict(variables, params=params), h, (jnp.zeros_like(x),) + tuple(skips[1:]), cond)
            np.testing.assert_allclose(out, other, atol=1e-6)  # nothing copied: the skip frame's pixels are unused
            assert float(jnp.max(jnp.abs(out - x))) > 0.05


def test_condition_field_reaches_the_decoder_output(pathway_model, tiny_config):
    cfg, model, variables, x, h, skips, cond = pathway_model
    assert "cond_field" in variables["params"]["decoder"]
    out = _decode(model, variables, h, skips, cond)
    assert float(jnp.max(jnp.abs(_decode(model, variables, h, skips, cond + 1.0) - out))) > 1e-4
    # With the switches off (the lab model) the decoder has neither pathway.
    from vp_jax.models import abstract_variables

    lab_params = abstract_variables(model_config(tiny_config))["params"]["decoder"]
    assert "cond_field" not in lab_params and lab_params["upc5_out"]["kernel"].shape[-1] == 3


def _transform_naive(frame, kernel):
    """out[h, w] = sum_ij kernel[i, j] * frame[clip(h + i - r), clip(w + j - r)]: a plain loop."""
    size, r = kernel.shape[0], kernel.shape[0] // 2
    h, w, _ = frame.shape
    out = np.zeros_like(frame)
    for i in range(size):
        for j in range(size):
            rows = np.clip(np.arange(h) + i - r, 0, h - 1)
            cols = np.clip(np.arange(w) + j - r, 0, w - 1)
            out += kernel[i, j] * frame[rows][:, cols]
    return out


def test_transform_frames_moves_the_picture_by_the_kernels_offset():
    from vp_jax.models.vgg64 import transform_frames

    rng = np.random.default_rng(0)
    frames = rng.random((2, 16, 16, 3)).astype(np.float32)
    rows, cols = rng.random((2, 3, 5)).astype(np.float32), rng.random((2, 3, 5)).astype(np.float32)
    out = np.asarray(transform_frames(frames, rows, cols))  # [2, 3, 16, 16, 3]
    for b in range(2):
        for k in range(3):
            np.testing.assert_allclose(out[b, k], _transform_naive(frames[b], np.outer(rows[b, k], cols[b, k])),
                                       rtol=1e-5, atol=1e-6)
    # One-hot kernels two taps right of the centre and one below move the picture 2 left, 1 up.
    one_hot = np.eye(5, dtype=np.float32)
    moved = np.asarray(transform_frames(frames[:1], one_hot[None, None, 3], one_hot[None, None, 4]))[0, 0]
    np.testing.assert_array_equal(moved[:-1, :-2], frames[0][1:, 2:])


def test_transform_pathway_moves_the_previous_frame_where_the_mask_selects_it(tiny_config):
    """With the compositor's mask forced onto one moved copy and that kernel forced to a shift, the
    frame is the previous frame shifted; the kernels are a function of g (where the latent acts)."""
    from vp_jax.models import init_variables

    cfg = dataclasses.replace(model_config(tiny_config), output="composite", transforms=2, transform_size=3)
    variables = init_variables(cfg, jax.random.PRNGKey(0))
    model = ConditionalVAE(cfg)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
    prev = jax.random.uniform(jax.random.PRNGKey(3), (2, 64, 64, 3))
    (h, skips), _ = model.apply(variables, x, True, method=ConditionalVAE.encode, mutable=["batch_stats"])
    comp, dec = variables["params"]["compositor"], variables["params"]["decoder"]
    assert comp["mask"]["kernel"].shape[-1] == 2 + 2  # softmax over [painted, skip frame, 2 moved copies]
    params = jax.tree.map(lambda a: a, variables["params"])
    params["compositor"]["mask"] = dict(kernel=jnp.zeros_like(comp["mask"]["kernel"]), bias=jnp.zeros(4).at[3].set(60.0))
    # kernel 1: rows one-hot at the centre, columns one tap right of it (logits [K, rows/cols, 3])
    logits = jnp.full((2, 2, 3), -60.0).at[1, 0, 1].set(60.0).at[1, 1, 2].set(60.0)
    params["decoder"]["kernels"] = dict(kernel=jnp.zeros_like(dec["kernels"]["kernel"]), bias=logits.reshape(-1))

    def decode(g, prev):
        return model.apply(dict(variables, params=params), g, skips, True, None, prev, method=ConditionalVAE.decode,
                           mutable=["batch_stats"])[0]

    out = decode(h, prev)
    np.testing.assert_allclose(out[:, :, :-1], prev[:, :, 1:], atol=1e-5)
    weights = jax.random.normal(jax.random.PRNGKey(4), dec["kernels"]["kernel"].shape)
    params["decoder"]["kernels"] = dict(kernel=weights, bias=logits.reshape(-1) * 0)
    assert float(jnp.max(jnp.abs(decode(h, prev) - decode(-h, prev)))) > 1e-3
