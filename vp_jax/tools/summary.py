"""Parameter table of a config's model, built abstractly (``jax.eval_shape``: no memory, ~1 s).

    python -m vp_jax.tools.summary --config configs/lab_bair.py
    python -m vp_jax.tools.summary --config configs/lab_bair.py --config.model.learned_prior=False

Prints one row per network (encoder, decoder, frame predictor, posterior, prior) and the total;
BatchNorm running statistics are buffers, not parameters, and are listed apart (PyTorch does not
count them either).
"""

from __future__ import annotations

import sys

import jax

from vp_jax.config import ModelConfig, cli_flags_parser, run_config
from vp_jax.errors import ConfigError, cli_main
from vp_jax.models.cvae import abstract_variables

MODULES = ("encoder", "decoder", "frame_predictor", "posterior", "prior")


def _count(tree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """``{module: parameters}`` for the networks present (no 'prior' with a fixed prior) + 'total'."""
    params = abstract_variables(cfg)["params"]
    counts = {name: _count(params[name]) for name in MODULES if name in params}
    counts["total"] = sum(counts.values())
    return counts


def format_table(cfg: ModelConfig) -> str:
    """The table printed by the CLI."""
    counts = parameter_counts(cfg)
    buffers = _count(abstract_variables(cfg)["batch_stats"])
    rows = [(name, counts[name]) for name in MODULES if name in counts]
    if not cfg.learned_prior:
        rows.append(("prior", "- (fixed N(0, I))"))
    rows.append(("total", counts["total"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'module':<{width}}  {'parameters':>12}", "-" * (width + 14)]
    for name, value in rows:
        if name == "total":
            lines.append("-" * (width + 14))
        text = f"{value:,}" if isinstance(value, int) else value
        lines.append(f"{name:<{width}}  {text:>12}")
    lines.append(f"(+ {buffers:,} BatchNorm running statistics, not trained)")
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> None:
    """``python -m vp_jax.tools.summary --config FILE [--config.FIELD=VALUE ...]``: the flags of train.py's
    ``--config`` (ml_collections ``config_flags``), with the same one-line errors."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "a configs/*.py file", flag_values=fv, lock_config=True)
    argv = sys.argv[1:] if argv is None else argv
    rest = cli_flags_parser(fv)(["python -m vp_jax.tools.summary", *argv])
    if len(rest) > 1:
        raise ConfigError(f"unexpected argument {rest[1]!r} (options are --config FILE, --config.FIELD=VALUE)")
    if fv["config"].value is None:
        raise ConfigError("--config: expected a configs/*.py file")
    run = run_config(fv["config"].value)
    print(f"config: {fv['config'].config_filename}")
    print(format_table(run.model))


if __name__ == "__main__":
    main()
