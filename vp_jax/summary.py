"""Parameter table of a config's model, built abstractly (``jax.eval_shape``: no memory, ~1 s).

    python -m vp_jax.summary --config configs/lab_bair.py
    python -m vp_jax.summary --config configs/lab_bair.py --config.model.learned_prior=False

Prints one row per network (encoder, decoder, frame predictor, posterior, prior) and the total;
BatchNorm running statistics are buffers, not parameters, and are listed apart (PyTorch does not
count them either).
"""

from __future__ import annotations

import argparse
import ast
import sys

import jax
import ml_collections

from vp_jax.config import ModelConfig, load_config_file, model_config, validate
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


def _parse_value(raw: str, old):
    """A command-line override converted to the type of the field it replaces."""
    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(raw)
    if isinstance(old, int):
        return int(raw)
    if isinstance(old, float):
        return float(raw)
    if isinstance(old, (tuple, list)):
        return tuple(ast.literal_eval(raw))
    return raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply ``--config.a.b=value`` arguments (the ml_collections ``config_flags`` syntax)."""
    for arg in overrides:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ConfigError(f"{arg}: expected --config.<field>=<value>")
        path, raw = arg[len("--config.") :].split("=", 1)
        node = config
        *parents, leaf = path.split(".")
        try:
            for name in parents:
                node = node[name]
            old = node[leaf]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"config.{path}: unknown field") from None
        try:
            node[leaf] = _parse_value(raw, old)
        except (ValueError, SyntaxError, TypeError):
            raise ConfigError(f"config.{path} = {raw!r}: expected a value of type {type(old).__name__}") from None
    return config


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vp_jax.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a configs/*.py file")
    args, overrides = parser.parse_known_args(argv)
    config = validate(apply_overrides(load_config_file(args.config), overrides))
    print(f"config: {args.config}")
    print(format_table(model_config(config)))


if __name__ == "__main__":
    main(sys.argv[1:])
