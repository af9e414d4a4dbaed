"""The package's shape: imports run one way (function-level imports included)
and every file stays short enough to read in one sitting.

The import graph is read from the source (every ``import`` statement
anywhere in a module, by walking its AST), not from ``sys.modules``, so a
function-level import counts as much as one at the top. An edge goes to the
module named (``from .run_folder import X`` -> ``textvae.run_folder``;
``from . import launch`` -> ``textvae.cli.launch``); the implicit import of
a module's parent packages is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "textvae"

# The layers of the issue: nothing here imports training/ or cli/.
LOWER = ["textvae.model", "textvae.base", "textvae.nn", "textvae.latent", "textvae.objectives",
         "textvae.data", "textvae.tokenization", "textvae.generation", "textvae.operations",
         "textvae.evaluation", "textvae.image", "textvae.config", "textvae.config_tree", "textvae.inference",
         "textvae.lexicon", "textvae.word_cache"]
BOTTOM = ["textvae.errors", "textvae.runtime", "textvae.run_folder", "textvae.config_tree", "textvae.builtin",
          "textvae.hub", "textvae.run_lock", "textvae.threads", "textvae.user_cache"]  # import only the leaves below
# The layers bottom up (the README's layout section draws them): a module
# imports its own layer and the ones below, never one above.
LAYERS = [
    ["textvae.errors", "textvae.threads", "textvae.user_cache"],  # leaves: they import nothing of textvae
    ["textvae.config_tree", "textvae.runtime", "textvae.run_folder", "textvae.builtin", "textvae.hub",
     "textvae.run_lock"],
    ["textvae.config"],
    ["textvae.tokenization", "textvae.data", "textvae.latent", "textvae.objectives", "textvae.nn",
     "textvae.generation", "textvae.image.data", "textvae.image.batches", "textvae.image.layers",
     "textvae.image.config", "textvae.image.plots", "textvae.image.splits", "textvae.prior",
     "textvae.inference", "textvae.lexicon", "textvae.word_cache"],
    ["textvae.base", "textvae.model", "textvae.operations", "textvae.image.model"],
    ["textvae.evaluation", "textvae.image.evaluate"],
    ["textvae.training"],
    ["textvae.cli", "textvae.serve", "textvae.__main__", "textvae"],
]
MAX_LINES = 320
LIMITS = {"training/trainer.py": 300, "cli/mnist.py": 200}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The textvae modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_graph_sees_function_level_imports(graph):
    assert "textvae.operations" in graph["textvae.model"]  # imported inside TextVAE.encode and friends
    assert "textvae.cli.launch" in graph["textvae.cli.train"]  # `from . import launch`


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_lower_layers_never_import_training_or_cli(graph):
    wrong = [f"{name} -> {target}" for name in graph for target in graph[name]
             if any(under(name, low) for low in LOWER)
             and (under(target, "textvae.training") or under(target, "textvae.cli"))]
    assert not wrong, wrong
    wrong = [f"{name} -> {target}" for name in graph if under(name, "textvae.training")
             for target in graph[name] if under(target, "textvae.cli")]
    assert not wrong, wrong
    # Only the command line (and `python -m textvae`) imports the command line.
    wrong = [f"{name} -> {target}" for name in graph if not (under(name, "textvae.cli") or name == "textvae.__main__")
             for target in graph[name] if under(target, "textvae.cli")]
    assert not wrong, wrong


def layer(name: str) -> int:
    """The layer of the longest prefix in LAYERS that names ``name``'s module or package."""
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes
               if under(name, prefix)]
    assert matches, f"{name} is in no layer of LAYERS"
    return max(matches)[1]


def test_imports_run_down_the_layers(graph):
    upward = [f"{name} (layer {layer(name)}) -> {target} (layer {layer(target)})"
              for name in graph for target in graph[name] if layer(target) > layer(name)]
    assert not upward, upward


def test_the_bottom_modules_import_only_the_error_type(graph):
    for name in LAYERS[0]:
        assert graph[name] == set(), (name, graph[name])
    for name in BOTTOM:
        assert graph[name] <= set(LAYERS[0]), (name, graph[name])


def test_files_stay_short():
    lengths = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    too_long = {name: n for name, n in lengths.items() if n > LIMITS.get(name, MAX_LINES)}
    assert not too_long, too_long
    assert set(LIMITS) <= set(lengths)
