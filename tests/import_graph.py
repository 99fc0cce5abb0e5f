"""The project's modules and who imports whom, read from the source (nothing is imported).

Shared by the structure tests and `benchmarks/structure.py`. Every import counts, at module level
or inside a function: a function-level import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parent.parent


def package_roots(repo: Path = REPO) -> dict[str, Path]:
    """Package name → folder. `drivers/` and `inspection/` are installed as amflow_edge.drivers and
    amflow_edge.inspection (links inside amflow_edge/ point at them); an older tree has them top-level."""
    roots = {"amflow_edge": repo / "amflow_edge"}
    for name in ("drivers", "inspection"):
        linked = (repo / "amflow_edge" / name).is_symlink()
        roots[f"amflow_edge.{name}" if linked else name] = repo / name
    return roots


def module_files(repo: Path = REPO) -> dict[str, Path]:
    """Module name → file, each real file once."""
    found: dict[str, Path] = {}
    for package, folder in package_roots(repo).items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder)
            if relative.parts[0] in ("drivers", "inspection") and (folder / relative.parts[0]).is_symlink():
                continue
            parts = [*package.split("."), *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(files: dict[str, Path]) -> nx.DiGraph:
    """An edge a → b for every project module b that module a imports (a package's __init__ is a module)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name in imported_names(tree, module, path.name == "__init__.py"):
            target = name
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph.add_edge(module, target)
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """Each import cycle, as the modules around it."""
    return [list(cycle) for cycle in nx.simple_cycles(graph)]
