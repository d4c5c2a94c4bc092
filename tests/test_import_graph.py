"""The import graph of src/kava: no circle, and imports point down the story (STYLE.md).

Every `import` and `from ... import` of a kava module counts, at module level and inside
functions alike (an import placed in a function to hide a circle is still a circle). Importing
`kava.a.b` also runs the package `kava.a`'s `__init__`, so it counts as importing that too.

The layers, lowest first; a module imports only modules of its own layer or of a lower one:

    foundation   kava, errors, failpoints, io, locking, config, numbers, plots (accuracy figures),
                 methods (each method's config overrides)
    data         kava.data
    tensors      kava.compression, kava.losses: functions of tensors, called by the model and training
    model        kava.model
    inference    kava.inference, and the evaluation core (answer, evaluate, latent_decoding): the
                 model answering questions, which training's validation step calls
    training     kava.training
    api          kava.api (the Python front end), kava.hub (checkpoints by hub repo id), kava.export
                 (a checkpoint as a plain transformers folder)
    experiments  kava.experiments
    front ends   the commands: kava.cli, kava.__main__, every */cli.py, kava.bench, kava.demo, and
                 kava.evaluation.harness (the lm-evaluation-harness model, run as `python -m`)

and within a layer no package imports another that imports it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

LAYERS = ["foundation", "data", "tensors", "model", "inference", "training", "api", "experiments", "front ends"]
FOUNDATION = {"kava", "kava.errors", "kava.failpoints", "kava.io", "kava.locking", "kava.config", "kava.numbers",
              "kava.plots", "kava.methods"}
FRONT_ENDS = {"kava.cli", "kava.__main__", "kava.demo", "kava.evaluation.harness"}
BY_PACKAGE = {"kava.data": "data", "kava.compression": "tensors", "kava.losses": "tensors", "kava.model": "model",
              "kava.training": "training", "kava.inference": "inference", "kava.evaluation": "inference",
              "kava.api": "api", "kava.hub": "api", "kava.export": "api", "kava.experiments": "experiments",
              "kava.bench": "front ends"}

# Edges allowed to break the rules until a named change removes them (keep this empty where possible:
# a new entry needs a comment saying which change removes it).
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Module name -> file, for every .py file under src/kava (a package is its __init__)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str], root: str = "kava") -> dict[str, int]:
    """The known modules that module `name` (file `path`) imports, anywhere in the file -> the line
    of the first import. Importing `a.b.c` also imports the packages `a.b` (and `a`) whose __init__
    runs first, unless `name` lies inside them (its own packages are imported already)."""
    found: dict[str, int] = {}
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}

    def add(target: str, line: int) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and (prefix not in own or i == len(parts)):
                found.setdefault(prefix, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == root:
            add(node.module, node.lineno)
            for alias in node.names:  # `from kava.model import shapes`: the submodule
                if f"{node.module}.{alias.name}" in known:
                    add(f"{node.module}.{alias.name}", node.lineno)
    return found


def import_graph(src: Path = SRC) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """(module -> {imported module: line}, module -> its file relative to `src`)."""
    files = module_files(src)
    graph = {name: {t: line for t, line in imports_of(name, path, set(files)).items() if t != name}
             for name, path in files.items()}
    return graph, {name: path.relative_to(src).as_posix() for name, path in files.items()}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """A list [a, b, ..., a] of modules each importing the next, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def describe(chain: list[str], graph: dict[str, dict[str, int]], files: dict[str, str]) -> str:
    """One line per edge of a chain of imports, with the file and line of each import."""
    return "\n".join(f"  {a} imports {b}  ({files[a]}:{graph[a][b]})" for a, b in zip(chain, chain[1:]))


def layer_of(name: str) -> str:
    if name in FOUNDATION:
        return "foundation"
    if name in FRONT_ENDS or name.endswith(".cli"):
        return "front ends"
    for package, layer in BY_PACKAGE.items():
        if name == package or name.startswith(package + "."):
            return layer
    raise AssertionError(f"{name}: no layer; add it to the layers of tests/test_import_graph.py")


def upward_imports(graph: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if rank[layer_of(b)] > rank[layer_of(a)] and (a, b) not in KNOWN_EXCEPTIONS)


def package_of(name: str) -> str:
    """kava.model.student -> kava.model; kava.api -> kava.api (a top-level module is its own unit)."""
    parts = name.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The graph between packages, the front ends left out (they sit above everything, and
    evaluation/cli.py may import kava.api, which imports the evaluation core)."""
    out: dict[str, dict[str, int]] = {}
    for a, targets in graph.items():
        if layer_of(a) == "front ends":
            continue
        for b, line in targets.items():
            pa, pb = package_of(a), package_of(b)
            if pa != pb and layer_of(b) != "front ends" and (a, b) not in KNOWN_EXCEPTIONS:
                out.setdefault(pa, {}).setdefault(pb, line)
    return out


# ----- the tests ----------------------------------------------------------------------------------


def test_no_module_imports_one_that_imports_it_back():
    graph, files = import_graph()
    assert len(files) > 50 and graph["kava.training.trainer"], "the graph was not read"
    cycle = find_cycle({a: {b: line for b, line in t.items() if (a, b) not in KNOWN_EXCEPTIONS}
                        for a, t in graph.items()})
    assert cycle is None, "import circle:\n" + describe(cycle, graph, files)


def test_imports_point_down_the_layers():
    graph, files = import_graph()
    bad = upward_imports(graph)
    assert not bad, "upward imports:\n" + "\n".join(
        f"  {a} ({layer_of(a)}, {files[a]}:{graph[a][b]}) imports {b} ({layer_of(b)})"
        for a, b in bad)


def test_data_and_model_import_nothing_above_them():
    """The issue's rule in its own words: data/ and model/ import nothing from training/,
    evaluation/, bench/, experiments/ (nor the api and the commands)."""
    graph, _ = import_graph()
    above = ("kava.training", "kava.evaluation", "kava.bench", "kava.experiments", "kava.api", "kava.cli", "kava.demo")
    bad = [(a, b) for a, targets in graph.items() if a.startswith(("kava.data", "kava.model"))
           for b in targets if b.startswith(above)]
    assert not bad, bad


def test_commands_import_no_benchmark():
    """A command's module (*/cli.py) takes nothing from kava.bench: a benchmark is a command of its
    own, not a library (a function two commands share lives in the layers below both)."""
    graph, files = import_graph()
    bad = [f"{a} ({files[a]}:{graph[a][b]}) imports {b}" for a, targets in graph.items() if a.endswith(".cli")
           for b in targets if b == "kava.bench" or b.startswith("kava.bench.") and not a.startswith("kava.bench.")]
    assert not bad, "\n".join(bad)


# Modules imported while the command line's parser is built: their kava imports may wait inside
# functions, so that `kava --help` stays fast (the front ends too, whatever their layer).
STARTUP_MODULES = {"kava.hub"}


def function_level_imports(path: Path, root: str = "kava") -> list[tuple[int, str]]:
    """(line, module) of every import of `root`'s modules made inside a function."""
    out = []
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                out += [(node.lineno, n) for n in names if n.split(".")[0] == root]
    return sorted(set(out))


def test_core_modules_import_kava_at_the_top():
    """Below the front ends, every kava import sits at the top of its file, where a reader sees
    the module's place in the graph."""
    _, files = import_graph()
    bad = [f"{files[name]}:{line} imports {target} inside a function" for name in files
           if layer_of(name) != "front ends" and name not in STARTUP_MODULES
           for line, target in function_level_imports(SRC / files[name])]
    assert not bad, "\n".join(bad)


def test_no_package_imports_one_that_imports_it_back():
    graph, files = import_graph()
    packages = package_graph(graph)
    cycle = find_cycle(packages)
    assert cycle is None, "package circle: " + " -> ".join(cycle)


def test_every_module_has_a_layer_and_no_exception_is_stale():
    graph, _ = import_graph()
    for name in graph:
        layer_of(name)
    for a, b in KNOWN_EXCEPTIONS:  # an exception whose edge is gone must be removed from the list
        assert b in graph.get(a, {}), f"known exception {a} -> {b} no longer exists; remove it"


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    """The checker itself, on a made-up package: a circle hidden in a function, an upward import."""
    pkg = tmp_path / "kava"
    (pkg / "data").mkdir(parents=True)
    (pkg / "training").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "data" / "rows.py").write_text("def f():\n    from kava.training.loop import g\n")
    (pkg / "training" / "loop.py").write_text("from kava.data import rows\n\n\ndef g():\n    pass\n")
    graph, files = import_graph(tmp_path)
    assert graph["kava.data.rows"] == {"kava.training": 2, "kava.training.loop": 2}
    assert graph["kava.training.loop"] == {"kava.data": 1, "kava.data.rows": 1}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"kava.data.rows", "kava.training.loop"} <= set(cycle)
    assert "kava/data/rows.py:2" in describe(cycle, graph, files)
    assert ("kava.data.rows", "kava.training.loop") in upward_imports(graph)
    assert find_cycle(package_graph(graph)) is not None
