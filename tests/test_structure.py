"""The package's shape (docs/design.md, "Shape"): no import circles, imports inside functions
included (they are how circles hide); no module so long that a reader loses its thread; the loop's
Trainer small enough to read at once."""
import ast
from pathlib import Path

import bidir

PACKAGE = Path(bidir.__file__).parent
MAX_MODULE_LINES = 400
MAX_TRAINER_LINES = 150


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}
    # a package's __init__ only hands its modules' names on: importing the package is importing them
    for name in paths:
        if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists():
            for source in edges:
                if name in edges[source] and not source.startswith(name + "."):
                    edges[source] = (edges[source] - {name}) | edges[name]
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_accepts_a_tree():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_circle():
    edges = graph()
    assert "bidir.train" in edges and "bidir.rollout" in edges["bidir.train"]
    assert cycle(edges) is None


def test_no_module_is_too_long_to_read():
    lengths = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_the_trainer_reads_at_once():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    trainer = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= MAX_TRAINER_LINES
