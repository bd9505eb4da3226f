"""The docs match the code: docs/design.md's table of config fields is the config's tree."""

from __future__ import annotations

import os
import re


from vp_jax.config import LAB_NAMES, flat_fields, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(heading: str) -> dict[str, str]:
    text = open(os.path.join(ROOT, "docs", "design.md")).read()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.M))


def test_design_lists_every_config_field_with_its_default():
    config = load_config_file(os.path.join(ROOT, "configs", "lab_bair.py")).to_dict()
    fields = {k: repr(v) for k, v in flat_fields(config).items()}
    assert _rows("Config fields") == fields


def test_design_lists_the_labs_names():
    assert _rows("The lab's names") == LAB_NAMES


def test_design_draws_every_module_in_its_layer():
    """docs/design.md's layer map names each module of the package under its folder's line."""
    text = open(os.path.join(ROOT, "docs", "design.md")).read()
    block = text.split("## Layers", 1)[1].split("```")[1]
    lines, key = {}, None
    for line in block.splitlines():  # a folder's line ("  5  models/  layers, ...") and its continuation lines
        m = re.match(r"^\s+(?:\d+\s+)?(\w+)/", line)
        key = m.group(1) if m else key
        lines[key] = lines.get(key, "") + line
    package = os.path.join(ROOT, "vp_jax")
    for folder, _, names in os.walk(package):
        wing = os.path.relpath(folder, package)
        for name in names:
            if name.endswith(".py") and name != "__init__.py" and "__pycache__" not in folder:
                stem = name[:-3]
                where = block if wing == "." else lines.get(wing.split(os.sep)[0], "")
                assert re.search(rf"\b{stem}\b" + (r"\.py" if wing == "." else ""), where), f"{wing}/{name} is not drawn"
