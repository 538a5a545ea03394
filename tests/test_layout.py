"""The package's shape (README, Development): no import cycle, small modules and functions, no private name
reached from outside its module. Read from the source's syntax trees; nothing is imported."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segaudit"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def imported(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The segaudit modules an import statement of module ``name`` loads (a package's names count as the package
    unless they are submodules)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
    target = ".".join(base + ([node.module] if node.module else []))
    found = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
    return found | ({target} & MODULES.keys())


def import_graph() -> dict[str, set[str]]:
    """Module -> the segaudit modules it imports, imports inside functions included."""
    statements = {name: [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
                  for name, tree in TREES.items()}
    return {name: set().union(*[imported(name, n) for n in found]) - {name} for name, found in statements.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while (member := stack.pop()) != node:
                        group.append(member)
                        on_stack.discard(member)
                    on_stack.discard(node)
                    if group:
                        groups.append(sorted([node, *group]))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def test_the_cycle_finder_finds_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_MODULE_LINES


def test_functions_are_short():
    long = [f"{name}.{f.name}: {f.end_lineno - f.lineno + 1} lines" for name, tree in TREES.items()
            for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def private_imports(path: Path) -> list[str]:
    """``from segaudit... import _name`` statements in ``path`` (private modules such as ``_compat`` aside)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("segaudit")):
            found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__") and f"segaudit.{a.name}" not in MODULES]
    return found


def test_no_private_name_is_imported_from_another_module():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    assert [hit for f in files for hit in private_imports(f)] == []
