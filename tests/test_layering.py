"""The package's import rule: each module imports only its own level or lower ones, and no
import loops, counting imports inside functions too."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "recbole_hydra"

#: lowest first; a module may import modules of its own level or of a lower one
LEVELS = [
    {"errors"},
    {"compat", "layers"},
    {"data"},
    {"model"},
    {"trainer"},
    {"registry", "config_schema"},
    {"config"},
    {"checkpoint"},
    {"training"},
    {"serving", "tune"},
    {"quick_start", "cli", "__main__", "__init__"},
]


def module_names():
    """Dotted name of every module of the package -> its file."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name, path, known):
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # ``from a import b`` imports the module a.b when b is one, else names of a
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def level(name):
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for i, group in enumerate(LEVELS):
        if key in group:
            return i
    raise AssertionError(f"{name} is in no level of LEVELS: add it there")


def import_graph():
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_import_finder_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import os\n\ndef f():\n    from recbole_hydra.config import make_config\n")
    known = {"recbole_hydra.config", "recbole_hydra.layers.probe"}
    assert imports_of("recbole_hydra.layers.probe", path, known) == {"recbole_hydra.config"}


def test_no_module_imports_a_higher_level():
    upward = [
        f"{name} (level {level(name)}) imports {other} (level {level(other)})"
        for name, others in import_graph().items()
        for other in others
        if level(other) > level(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_loops():
    graph = import_graph()
    state, loops = {}, []

    def visit(name, stack):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                loops.append(" -> ".join(stack[stack.index(other) :] + [other]))
            elif other not in state:
                visit(other, stack + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not loops, "\n".join(loops)


def test_importing_the_package_leaves_the_converters_unloaded():
    code = (
        "import sys, recbole_hydra; "
        "print([m for m in ('recbole_hydra.data.amazon2023', 'recbole_hydra.data.fetch', "
        "'recbole_hydra.tune') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
