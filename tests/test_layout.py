"""The package's layers: imports of vp_jax's own modules run one way, with no cycle.

Read from the source with ``ast`` (function-level imports included), so the test also fails on
an import that would only run later. Lowest layer first; a module may import its own wing and
the layers below it, never above it, and never a sibling on the same layer.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vp_jax"

#: Lowest first. Names are wings (folders) or top-level modules of vp_jax.
LAYERS = (
    ("errors", "fileio"),
    ("runtime",),
    ("config",),
    ("report",),
    ("data",),
    ("models",),
    ("store",),
    ("training", "evaluation"),
    ("predictor",),
    ("tools",),
    ("__init__",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
#: At most this many imports of vp_jax modules inside functions, each with a reason on its line.
MAX_FUNCTION_IMPORTS = 10


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def imports(path: pathlib.Path, modules: set[str]):
    """``(imported vp_jax module, line number, inside a function, source line)`` of every import."""
    source = path.read_text()
    lines = source.splitlines()
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]

    def resolve(node, alias):
        if isinstance(node, ast.Import):
            return alias.name
        base = node.module or ""
        if node.level:
            up = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(up + ([base] if base else []))
        full = f"{base}.{alias.name}"
        return full if full in modules else base  # ``from pkg import module`` or ``from module import name``

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    name = resolve(child, alias)
                    if name == "vp_jax" or name.startswith("vp_jax."):
                        yield name, child.lineno, inside, lines[child.lineno - 1]
            yield from walk(child, inside)

    yield from walk(ast.parse(source), False)


def graph(package: pathlib.Path = PACKAGE) -> dict:
    files = {module_name(p): p for p in package.rglob("*.py")}
    return {m: list(imports(p, set(files))) for m, p in files.items()}


def violations(edges: dict) -> list[str]:
    """Every import against the layer order, and every cycle among modules."""
    found = []
    for module, targets in edges.items():
        for target, line, _, _ in targets:
            a, b = wing(module), wing(target)
            if a == b:
                continue
            if RANK[b] >= RANK[a]:
                found.append(f"{module}:{line} imports {target} ({b} is not below {a})")
    state = {}

    def visit(module, stack):  # depth-first search for a cycle
        state[module] = "open"
        for target, line, _, _ in edges.get(module, ()):
            if target == module or target not in edges:
                continue
            if state.get(target) == "open":
                found.append("cycle: " + " -> ".join(stack[stack.index(target):] + [module, target]))
            elif target not in state:
                visit(target, stack + [module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    return found


def test_every_module_sits_in_a_layer():
    assert not [m for m in graph() if wing(m) not in RANK]


def test_imports_run_one_way_without_cycles():
    assert violations(graph()) == []


def test_a_planted_upward_import_or_cycle_is_caught(tmp_path):
    """The check itself can fail: a model importing evaluation, training importing evaluation, a cycle."""
    edges = graph()
    planted = dict(edges)
    planted["vp_jax.models.cvae"] = edges["vp_jax.models.cvae"] + [("vp_jax.evaluation.metrics", 1, True, "")]
    planted["vp_jax.training.loop"] = edges["vp_jax.training.loop"] + [("vp_jax.evaluation.scoring", 2, False, "")]
    planted["vp_jax.data.lab_folders"] = edges["vp_jax.data.lab_folders"] + [("vp_jax.data.pipeline", 3, True, "")]
    found = violations(planted)
    assert any(v.startswith("vp_jax.models.cvae:1 imports vp_jax.evaluation.metrics") for v in found)
    assert any(v.startswith("vp_jax.training.loop:2 imports vp_jax.evaluation.scoring") for v in found)
    assert any(v.startswith("cycle:") and "vp_jax.data.lab_folders" in v for v in found)


def test_function_level_imports_are_few_and_give_their_reason():
    inner = [(m, line, text) for m, targets in graph().items() for _, line, inside, text in targets if inside]
    unexplained = [f"{m}:{line}" for m, line, text in inner if "#" not in text]
    assert unexplained == []
    assert len({(m, line) for m, line, _ in inner}) <= MAX_FUNCTION_IMPORTS, sorted({f"{m}:{line}" for m, line, _ in inner})


@pytest.mark.parametrize("name", ["errors", "fileio", "config", "predictor"])
def test_only_the_public_face_sits_at_the_top(name):
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "config", "errors", "fileio", "predictor"] and name in top


#: Longest function (lines, docstring included) and most parameters (self and cls not counted).
MAX_FUNCTION_LINES, MAX_PARAMETERS = 80, 8


def oversized(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
            params += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES or len(params) > MAX_PARAMETERS:
                found.append(f"{name}:{node.lineno} {node.name}: {lines} lines, {len(params)} parameters")
    return found


def test_functions_are_small_with_few_parameters():
    found = [f for path in sorted(PACKAGE.rglob("*.py")) for f in oversized(path.read_text(), module_name(path))]
    assert found == []


def test_an_oversized_function_is_caught():
    long = "def f():\n" + "    x = 1\n" * 80
    many = "def g(self, a, b, c, d, e, f, g, h, *, i=0):\n    pass\n"
    assert oversized(long + many, "m") == ["m:1 f: 81 lines, 0 parameters", "m:82 g: 2 lines, 9 parameters"]
