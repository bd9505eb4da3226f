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


def _source_text() -> str:
    """Every Python source of the package and the two commands, adjacent string literals joined."""
    paths = [os.path.join(ROOT, "train.py"), os.path.join(ROOT, "eval.py")]
    paths += [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(ROOT, "vp_jax")) for n in ns if n.endswith(".py")]
    text = "\n".join(open(p).read() for p in paths)
    return re.sub(r"[\"']\s*\n\s*(?:\+\s*)?f?[\"']", "", text)


def quoted_messages() -> list[tuple[str, str]]:
    """``(file, message)`` of every message the docs quote inline (``error: ...``, ``warning: ...``,
    ``interrupted: ...``, ``resuming ...``, ``latent gain: ...``)."""
    found = []
    for name in ["README.md"] + sorted("docs/" + n for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")):
        text = open(os.path.join(ROOT, name)).read()
        found += [(name, m) for m in re.findall(r"`((?:error|warning|interrupted|resuming|latent gain)\b[^`]*)`", text)]
    return found


PLACEHOLDERS = r"\([^)]*(?:\.\.\.|…)[^)]*\)|<[^>]*>|…|\.\.\.|\b[A-Z]{1,5}\b|[^\s]*/[^\s]*|[^\s]*\d[^\s]*"


def unprinted(message: str, source: str) -> list[str]:
    """The literal stretches of ``message`` (between placeholders, numbers, paths and punctuation)
    of two or more words that are not in ``source``, nor are their first three or more words (the
    rest a value the code fills in)."""
    missing = []
    for stretch in re.split(PLACEHOLDERS, message.removeprefix("error: ").removeprefix("warning: ")):
        for part in re.split(r"[,;:()]", stretch):
            words = part.split()
            shortest = min(len(words), 3)
            if len(words) >= 2 and not any(" ".join(words[:k]) in source for k in range(len(words), shortest - 1, -1)):
                missing.append(part.strip())
    return missing


def test_every_message_the_docs_quote_is_printed_by_the_code():
    source = _source_text()
    messages = quoted_messages()
    assert len(messages) >= 5
    assert [(name, m, unprinted(m, source)) for name, m in messages if unprinted(m, source)] == []
    # The check can fail: a message the code does not print, and one it prints differently.
    assert unprinted("error: DIR/.lock: a second train.py holds this workdir", source)
    assert unprinted("interrupted: kept step N in DIR; run it again", source)
