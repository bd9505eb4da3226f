"""Data parallelism (vp_jax/runtime/parallel.py) and the CPU XLA flags (vp_jax/runtime/xla_flags.py).

The multi-device checks run in a subprocess with ``--xla_force_host_platform_device_count=2``
(XLA reads it once, when the backend starts), and compare, inside that one process, a mesh of
one device with a mesh of two: same losses (to 1e-4 relative over 5 steps), same parameters,
same generated frames and metrics.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vp_jax.runtime import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_two_device_script(script: str, timeout: float = 900) -> dict:
    """Run ``script`` with 2 host CPU devices; it prints one JSON line last."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


STAND_IN = """
import json
import jax, jax.numpy as jnp, numpy as np, optax
from vp_jax.runtime import parallel

assert jax.device_count() == 2, jax.devices()

def init(key):
    k1, k2 = jax.random.split(key)
    return {"w": 0.1 * jax.random.normal(k1, (3, 3, 3, 8)), "g": jnp.ones(8), "b": jnp.zeros(8),
            "d": 0.1 * jax.random.normal(k2, (8, 3))}

def loss_fn(p, x, y):
    h = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    m = h.mean((0, 1, 2)); v = h.var((0, 1, 2))          # BatchNorm over the (global) batch
    h = jax.nn.relu((h - m) * jax.lax.rsqrt(v + 1e-5) * p["g"] + p["b"])
    out = h.mean((1, 2)) @ p["d"]
    return jnp.mean((out - y) ** 2), m

tx = optax.adam(1e-2)

@jax.jit
def step(params, opt, batch):
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch["x"], batch["y"])
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss, m

rng = np.random.default_rng(0)
batches = [{"x": rng.random((8, 16, 16, 3), np.float32), "y": rng.random((8, 3), np.float32)} for _ in range(5)]
out = {}
for n in (1, 2):
    mesh = parallel.make_mesh(jax.devices()[:n])
    params = parallel.replicate(init(jax.random.key(0)), mesh)
    opt = parallel.replicate(tx.init(params), mesh)
    losses, means = [], []
    for b in batches:
        b = parallel.shard_batch(b, mesh)
        assert len(b["x"].sharding.device_set) == n
        params, opt, loss, m = step(params, opt, b)
        losses.append(float(loss)); means.append(np.asarray(m).tolist())
    out[n] = {"losses": losses, "means": means, "w": np.asarray(params["w"]).ravel().tolist(),
              "w_devices": len(params["w"].sharding.device_set),
              "w_replicated": bool(params["w"].sharding.is_fully_replicated)}
try:
    parallel.shard_batch({"x": np.zeros((3, 2))}, parallel.make_mesh())
    out["odd_batch_error"] = None
except Exception as e:
    out["odd_batch_error"] = type(e).__name__
print(json.dumps(out))
"""


def test_stand_in_two_devices_equal_one_device():
    out = run_two_device_script(STAND_IN)
    one, two = out["1"], out["2"]
    assert one["losses"] == pytest.approx(two["losses"], abs=1e-5, rel=1e-5)
    assert one["losses"][0] != one["losses"][-1]  # it trained
    for a, b in zip(one["means"], two["means"]):  # BatchNorm statistics over the global batch
        assert a == pytest.approx(b, abs=1e-5)
    assert one["w"] == pytest.approx(two["w"], abs=1e-5)
    assert two["w_devices"] == 2 and two["w_replicated"]
    assert out["odd_batch_error"] == "ConfigError"


def _run_cli(script, args, devices: int):
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, f"{script} on {devices} device(s):\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow  # two subprocess runs of train.py and eval.py: about 90 s on a 2-core CPU
def test_train_and_eval_commands_on_two_devices_equal_one_device(tmp_path):
    """train.py and eval.py shard by themselves when 2 devices are visible: same metrics.csv
    losses (1e-4 relative), validation PSNR and test metrics as the one-device run."""
    import pandas as pd

    data = str(tmp_path / "data")
    results = {}
    for devices in (1, 2):
        wd = str(tmp_path / f"run{devices}")
        log = _run_cli("train.py", ["--config", "configs/tiny.py", "--workdir", wd, f"--config.data.root={data}",
                                    "--config.train.epochs=1", "--config.train.epoch_size=5"], devices)
        assert ("data parallel over 2 devices" in log) == (devices == 2)
        _run_cli("eval.py", ["--workdir", wd, "--checkpoint", "latest"], devices)
        results[devices] = (pd.read_csv(os.path.join(wd, "metrics.csv")),
                            json.load(open(os.path.join(wd, "eval", "test", "metrics.json"))))
    (m1, e1), (m2, e2) = results[1], results[2]
    for col in ("loss", "mse", "kl"):
        assert m1[col].tolist() == pytest.approx(m2[col].tolist(), rel=1e-4, abs=1e-6), col
    assert m1["loss"].notna().all() and m1["step"].tolist() == m2["step"].tolist() == [5]
    # Predictions are rounded to uint8 before scoring: a float summation-order difference of 1e-7
    # flips the rounding of a few pixels, which moves PSNR by ~1e-3 dB.
    assert m1["val_psnr"].tolist() == pytest.approx(m2["val_psnr"].tolist(), abs=5e-3)
    assert e1["num_sequences"] == e2["num_sequences"] == 8
    assert e1["psnr"] == pytest.approx(e2["psnr"], abs=5e-3)
    assert e1["ssim"] == pytest.approx(e2["ssim"], abs=5e-4)
    assert e1["psnr_per_frame"] == pytest.approx(e2["psnr_per_frame"], abs=1e-2)
    assert e1["shuffled_condition"]["psnr"] == pytest.approx(e2["shuffled_condition"]["psnr"], abs=5e-3)


def test_batch_size_that_does_not_split_is_one_line_error(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config", "configs/tiny.py", "--workdir",
         str(tmp_path / "wd"), f"--config.data.root={tmp_path / 'data'}", "--config.train.batch_size=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: config.train.batch_size = 3: expected a multiple")
    assert not (tmp_path / "wd").exists()


def test_importing_the_training_code_starts_no_backend():
    """jax.distributed.initialize() must come before JAX starts a backend; train.py imports the
    loop first, so importing it must not start one."""
    script = (
        "import vp_jax.training.loop, vp_jax.evaluation.scoring, vp_jax.runtime.parallel\n"
        "from vp_jax.runtime.xla_flags import _backend_started\n"
        "print(int(_backend_started()))\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "0"


# ----------------------------------------------------------------------------- xla_flags


@pytest.fixture
def clean_env(monkeypatch):
    # A private copy of the environment: configure_xla_flags() writes XLA_FLAGS, and a made-up
    # flag left in the real one would abort XLA in every later test of this process.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for var in ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_PLATFORM_NAME", xla_flags.OPT_OUT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    monkeypatch.setattr(xla_flags, "_accelerator_plugins", lambda: [])
    monkeypatch.setattr(xla_flags, "accepted_flags", lambda candidates: tuple(candidates))
    return monkeypatch


def test_flags_added_on_cpu(clean_env):
    added = xla_flags.configure_xla_flags(("--xla_a=1", "--xla_b=x"))
    assert added == ["--xla_a=1", "--xla_b=x"]
    assert os.environ["XLA_FLAGS"] == "--xla_a=1 --xla_b=x"


def test_user_flags_win(clean_env):
    clean_env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_a=0")
    added = xla_flags.configure_xla_flags(("--xla_a=1", "--xla_b=x"))
    assert added == ["--xla_b=x"]
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_a=0 --xla_b=x"


def test_opt_out_and_accelerators(clean_env):
    clean_env.setenv(xla_flags.OPT_OUT_ENV, "1")
    assert xla_flags.configure_xla_flags(("--xla_a=1",)) == []
    clean_env.delenv(xla_flags.OPT_OUT_ENV)
    clean_env.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert xla_flags.configure_xla_flags(("--xla_a=1",)) == []
    clean_env.setenv("JAX_PLATFORMS", "cpu")
    clean_env.setattr(xla_flags, "_accelerator_plugins", lambda: ["cuda12"])
    assert xla_flags.configure_xla_flags(("--xla_a=1",)) == ["--xla_a=1"]  # JAX_PLATFORMS=cpu wins
    clean_env.delenv("JAX_PLATFORMS")
    assert xla_flags.configure_xla_flags(("--xla_b=1",)) == []  # a GPU plugin and no JAX_PLATFORMS
    assert "XLA_FLAGS" not in os.environ or "--xla_b" not in os.environ["XLA_FLAGS"]


def test_too_late_warns(clean_env):
    clean_env.setattr(xla_flags, "_backend_started", lambda: True)
    with pytest.warns(UserWarning, match="after JAX started"):
        assert xla_flags.configure_xla_flags(("--xla_a=1",)) == []


def test_probe_rejects_unknown_flag_and_accepts_ours(tmp_path, monkeypatch):
    """The subprocess check survives an unknown flag (which aborts XLA) and caches per jaxlib."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xla_flags.probe_flags(["--xla_vp_jax_no_such_flag=1"]) is False
    assert xla_flags.probe_flags(list(xla_flags.CPU_FLAGS)) is True
    monkeypatch.setattr(xla_flags, "VERIFIED", frozenset())
    assert xla_flags.accepted_flags(xla_flags.CPU_FLAGS + ("--xla_vp_jax_no_such_flag=1",)) == xla_flags.CPU_FLAGS
    cache = json.loads((tmp_path / "vp_jax" / "xla_flags.json").read_text())
    assert sorted(cache.values()) == [False] + [True] * len(xla_flags.CPU_FLAGS)
