"""The layout's rules, read from the source (static analysis of every import statement, at module
level and inside functions; `if TYPE_CHECKING:` blocks never run and are skipped):
sandbox/ imports nothing from agent/; click is imported only in agent/cli/; no import cycles."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "actions", "sandbox", "prompts")


@functools.cache
def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported module name) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name`: name is a submodule or an attribute of pkg
            out.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
            out.append((node.lineno, base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


@functools.cache  # every test reads the same sources: parse them once
def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    raw: dict[str, list[tuple[int, str]]] = {}
    for name, path in modules.items():
        raw[name] = _imports(path, name, path.name == "__init__.py")
        for _, target in raw[name]:
            # the longest project module the name denotes (an attribute import names its module)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # A module's own parent packages are not edges: Python initialises them before the
            # module, whatever it imports (`from agent.run.x import y` names agent.run too).
            if target and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    return edges, raw


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def test_sandbox_imports_nothing_from_agent():
    _, raw = _graph()
    bad = [f"{m}:{line} imports {target}" for m, imps in raw.items() if m.split(".")[0] == "sandbox"
           for line, target in imps if target.split(".")[0] == "agent"]
    assert not bad, "\n".join(bad)


def test_click_only_in_the_cli():
    _, raw = _graph()
    bad = [f"{m}:{line}" for m, imps in raw.items() if not (m == "agent.cli" or m.startswith("agent.cli."))
           for line, target in imps if target.split(".")[0] == "click"]
    assert not bad, "click imported outside agent/cli: " + ", ".join(bad)


KNOWN_CYCLES: list[list[str]] = []  # none: a cycle found later is named here only with its reason


def test_no_import_cycles():
    edges, _ = _graph()
    cycles = [c for c in _cycles(edges) if c not in KNOWN_CYCLES]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_the_layout():
    """The analysis finds what it should: a known import, a function-level one, the packages."""
    edges, raw = _graph()
    assert "agent.run.loop" in edges["agent.run.runner"]
    assert any(t.startswith("agent.desktop.x11") for _, t in raw["agent.run.environment"])  # inside a function
    assert "agent.cli" in edges and "sandbox.session" in edges and "actions.schema" in edges
    # and a cycle, were there one, would be found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Packages import downwards only. A module's layer is that of the longest prefix named here; a
# module may import modules of its own layer or below, never above (function-level imports too).
LAYERS: list[tuple[str, ...]] = [
    ("actions", "prompts", "sandbox"),  # the action schema and policy; the display sandbox
    # core: what a run is and keeps; text read off images; what is trusted
    ("agent.errors", "agent.task", "agent.steps", "agent.trace", "agent.secrets", "agent.ocr", "agent.trust"),
    ("agent.desktop", "agent.backends"),  # the screen and input; the models
    ("agent.targets",),  # what a step aimed at, and finding it again
    ("agent.run",),  # one run: session, events, the agent loop, checks
    # drivers built on a run; run_task, the one place that picks a flow or the loop for a task
    ("agent.flow", "agent.replay", "agent.run.runner"),
    ("agent.suite", "agent.serve", "agent.report", "agent.eval", "agent.ui", "agent.doctor"),
    ("agent.cli",),
]


def _layer(module: str) -> int | None:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    return found


def test_packages_import_downwards_only():
    _, raw = _graph()
    modules = _modules()
    bad = []
    for m, imps in raw.items():
        here = _layer(m)
        for line, target in imps:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            there = _layer(target) if target else None
            if here is not None and there is not None and there > here:
                bad.append(f"{m}:{line} imports {target} (a higher layer)")
    assert not bad, "\n".join(sorted(set(bad)))


def test_every_module_has_a_layer():
    assert not [m for m in _modules() if m not in ("agent",) and _layer(m) is None]


def test_no_module_imports_private_names_of_another():
    bad = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                bad += [f"{name}:{node.lineno} imports {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)
