"""The layers, read from the source (ast): the engine imports no app, and no module imports itself back.

Every import counts, also one inside a function: a lazy import is still a
dependency, and the cycle it hides is the one that breaks at start-up.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The engine, and the library modules apps may import; none of them may import an app.
ENGINE = {
    "settings", "models", "jobs", "hooks", "web", "dashboard", "api", "schedules", "mailer", "media",
    "charts", "limits", "metrics", "openapi", "backup", "litejobs", "schema", "reloader", "httpclient",
    "schedule_edits", "schedule_pages", "database", "job_counts", "job_queries", "schedule_tables", "keys", "openapi_parts",
    "consumer", "loader", "wakeup", "job_history", "params", "runs", "queue_storage", "queue_status", "group_commit", "sandbox_faults", "take_ahead",
}


def project_modules():
    """{module name: path} of the top-level modules and every module under apps/."""
    found = {path.stem: path for path in ROOT.glob("*.py")}
    for path in (ROOT / "apps").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path, modules):
    """The project modules that the file at `path` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from apps.orders import models` imports the module apps.orders.models.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in modules}


def graph():
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_the_engine_imports_no_app():
    edges = graph()
    for module in sorted(ENGINE):
        assert module in edges, f"{module}.py is listed as engine but does not exist"
        apps = sorted(name for name in edges[module] if name == "apps" or name.startswith("apps."))
        assert not apps, f"{module}.py imports {apps}: the engine must not import an app (send a hooks event instead)"


def find_cycle(edges):
    """One import cycle of graph `edges` as a list of modules, or None."""
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_import_cycle_between_modules():
    edges = graph()
    # A package importing its own submodules (apps/orders/__init__.py -> apps.orders.tasks) is
    # how it declares itself; a submodule never imports its package back, so drop those edges.
    for name, targets in edges.items():
        edges[name] = {t for t in targets if t != name and not t.startswith(name + ".") and not name.startswith(t + ".")}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_checker_sees_a_lazy_import_and_a_cycle(tmp_path):
    """The two rules above would catch what they are for: an import inside a function counts."""
    (tmp_path / "a.py").write_text("def f():\n    from apps.orders import models\n    import b\n")
    modules = {"a": tmp_path / "a.py", "b": None, "apps.orders.models": None}
    assert imports_of(tmp_path / "a.py", modules) == {"apps.orders.models", "b"}
    assert find_cycle({"jobs": {"schedules"}, "schedules": {"jobs"}}) == ["jobs", "schedules", "jobs"]
    assert find_cycle({"web": {"jobs"}, "jobs": {"models"}}) is None
