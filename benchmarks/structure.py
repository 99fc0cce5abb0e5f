"""How the code is shaped: module and function sizes, import cycles, and what the CLI costs to start.

    .venv/bin/python benchmarks/structure.py [--runs 5]

Prints the longest module and function, the number of import cycles between the project's modules
(function-level imports count: they are still a dependency), and the import time of
`amflow-edge --help` and `amflow-edge outbox status` (`python -X importtime`, summed over top-level
imports, median of --runs) with the modules of note each loads. It reads the older flat layout too,
so one layout can be compared with the next (`--repo DIR`).
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.import_graph import import_graph, module_files

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("open3d", "trimesh", "pypylon", "scipy", "cv2", "maxflow")


def longest_function(files: dict[str, Path]) -> tuple[int, str]:
    best = (0, "")
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                best = max(best, (length, f"{module}.{node.name}"))
    return best


def import_cost(repo: Path, argv: list[str], runs: int) -> tuple[float, list[str]]:
    """Milliseconds of imports (median) and which heavy libraries the command loaded."""
    code = (  # the console script's entry point, in this layout (cli.main:main) or the flat one (cli:main)
        "import sys; sys.argv = ['amflow-edge', *sys.argv[1:]]\n"
        "from amflow_edge.cli import main\n"
        "sys.exit((main.main if not callable(main) else main)())"
    )
    totals = []
    heavy: set[str] = set()
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code, *argv],
            capture_output=True,
            text=True,
            cwd=repo,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(repo)},
        )
        total = 0
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            fields = line.removeprefix("import time:").split("|")
            name = fields[2]
            if fields[0].strip() == "self [us]":
                continue
            if not name.startswith("  "):
                total += int(fields[1])
            top = name.strip().split(".")[0]
            if top in HEAVY:
                heavy.add(top)
        totals.append(total / 1000)
    return statistics.median(totals), sorted(heavy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    args = parser.parse_args()
    files = module_files(args.repo)
    lines = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in files.items()}
    longest_module = max(lines, key=lambda m: lines[m])
    graph = import_graph(files)
    cyclic = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    simple = sum(1 for _ in nx.simple_cycles(graph))
    length, function = longest_function(files)
    print(f"modules: {len(files)}")
    print(f"longest module: {longest_module} ({lines[longest_module]} lines)")
    print(f"longest function: {function} ({length} lines)")
    print(f"import cycles: {simple} simple cycles in {len(cyclic)} tangles of {sum(map(len, cyclic))} modules")
    for component in cyclic:
        print("  tangle:", ", ".join(sorted(component)))
    help_ms, help_heavy = import_cost(args.repo, ["--help"], args.runs)
    print(
        f"import time, amflow-edge --help: {help_ms:.0f} ms (loads {', '.join(help_heavy) or 'none of ' + '/'.join(HEAVY)})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "station.toml"
        demo = (args.repo / "config" / "demo.toml").read_text(encoding="utf-8")
        demo = demo.replace('"../run/data"', f'"{tmp}/data"').replace('"../run/state"', f'"{tmp}/state"')
        config.write_text(
            demo.replace('"designs/', f'"{args.repo}/config/designs/').replace(
                '"calibration/', f'"{args.repo}/config/calibration/'
            ),
            encoding="utf-8",
        )
        status_ms, status_heavy = import_cost(args.repo, ["outbox", "status", "--config", str(config)], args.runs)
    print(
        f"import time, amflow-edge outbox status: {status_ms:.0f} ms "
        f"(loads {', '.join(status_heavy) or 'none of ' + '/'.join(HEAVY)})"
    )


if __name__ == "__main__":
    main()
