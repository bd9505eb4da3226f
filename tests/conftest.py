"""Shared fixtures: a tiny model (configs/tiny.py) initialised once per test session.

Initialising compiles ~100 threefry draws (seconds on a 2-core CPU), so tests share one set of
variables; variants that only drop networks (fixed prior) reuse it.
"""

import logging
import os

import jax
import pytest

from vp_jax.config import load_config_file, model_config, validate
from vp_jax.models.cvae import init_variables

# The files that take longest (minutes on a 2-core CPU) run first, so that pytest-xdist's
# workers (``--dist loadfile``) finish together instead of one waiting for the other's last file.
LONGEST_FIRST = ("test_reliability.py", "test_step.py", "test_coin_flip.py", "test_cli.py", "test_bad_inputs.py",
                 "test_speed.py", "test_generation.py", "test_models.py", "test_checkpoints.py", "test_whatif.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first (:data:`LONGEST_FIRST`); tests marked ``slow`` run only with
    ``VP_JAX_SLOW=1`` or when ``-m`` selects them."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if os.environ.get("VP_JAX_SLOW") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with VP_JAX_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def logged():
    """What vp_jax logs during the test, as ``"<level>: <message>"`` lines (``info``, ``warning``)."""
    lines = []

    class Handler(logging.Handler):
        def emit(self, record):
            lines.append(f"{record.levelname.lower()}: {record.getMessage()}")

    logger, handler = logging.getLogger("vp_jax"), Handler()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(scope="session")
def tiny_config():
    """configs/tiny.py: enc_widths (4, 4, 8, 8), g 8, z 4, rnn 16, n_past 2, n_future 3."""
    return validate(load_config_file(os.path.join(CONFIGS, "tiny.py")))


@pytest.fixture(scope="session")
def tiny_variables(tiny_config):
    """``{'params', 'batch_stats'}`` of the tiny learned-prior model (PRNGKey(0))."""
    return init_variables(model_config(tiny_config), jax.random.PRNGKey(0))


# Backend optimisation off: same results, a fraction of XLA's compile time on a 2-core CPU.
# For test harnesses and oracles only (what is tested is the traced program, not XLA's
# optimisation of it); the jitted train step itself is tested as the library compiles it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class FastJit:
    """``jax.jit(fn, static_argnums)`` compiled with :data:`FAST_COMPILE`, cached per static
    arguments and input shapes/dtypes."""

    def __init__(self, fn, static_argnums=()):
        self._jitted = jax.jit(fn, static_argnums=static_argnums)
        self._static = tuple(static_argnums)
        self._cache = {}

    def __call__(self, *args):
        dynamic = [a for i, a in enumerate(args) if i not in self._static]
        leaves, treedef = jax.tree.flatten(dynamic)
        key = (
            tuple(args[i] for i in self._static),
            treedef,
            tuple((jax.numpy.shape(x), jax.numpy.result_type(x)) for x in leaves),
        )
        if key not in self._cache:
            self._cache[key] = self._jitted.lower(*args).compile(compiler_options=FAST_COMPILE)
        return self._cache[key](*dynamic)


@pytest.fixture(scope="session")
def fast_jit():
    """``fast_jit(fn, static_argnums=())`` -> a :class:`FastJit`."""
    return FastJit


@pytest.fixture(scope="session", autouse=True)
def fast_compiling_subprocesses():
    """train.py, eval.py and the scripts the tests start compile without XLA's backend
    optimisation: they compile a handful of programs and run each for a few steps, where the
    optimisation costs more than it saves (a tiny train.py run: 50 -> 37 s on a 2-core CPU). Same
    programs, same checks. This process keeps its own flags (its backend starts first); the
    in-process harnesses compile fast through :class:`FastJit`. VP_JAX_TEST_XLA_OPT=1 turns it off."""
    jax.devices()  # start this process's backend with the flags it was given
    if not os.environ.get("VP_JAX_TEST_XLA_OPT"):
        fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {fast}".strip()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_for_subprocesses(tmp_path_factory):
    """train.py, eval.py and the scripts that tests start share one persistent XLA compilation
    cache per test worker: the tiny model's train step, initialiser and sampler (about 30 s of
    compiling on a 2-core CPU) compile once, not in every run. This process read its jax config
    at import, so only child processes use the cache; a cache set by the caller is kept."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
