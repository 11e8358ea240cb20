"""The layout the README's "How the code is laid out" describes, read from the source with `ast`: no import cycle
among the project's modules, and test helpers imported by tests only."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("instructpart_dataset", "instructpart_metric", "pisa_model")
TOP_LEVEL_SCRIPTS = ("upload.py",)


def project_modules() -> dict:
    """{dotted module name: file path} of every module of the three packages and the top-level scripts."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for script in TOP_LEVEL_SCRIPTS:
        modules[script[: -len(".py")]] = os.path.join(ROOT, script)
    return modules


def imported_names(path: str, module: str, is_package: bool) -> set:
    """Every absolute dotted name `path` imports, wherever the import statement stands (module level or inside a
    function: a lazy import closes a loop as well). `from X import Y` yields X and X.Y (Y may be a submodule)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict:
    """{module: sorted project modules it imports}: each imported name mapped to the longest project module it
    names (`pisa_model.modeling_pisa.PisaConfig` -> `pisa_model.modeling_pisa`)."""
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module, path.endswith("__init__.py")):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != module:
                        targets.add(candidate)
                    break
        graph[module] = sorted(targets)
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (its first module repeated at the end), or None."""
    state = {}  # module -> "open" while on the current path, "done" once all it reaches is explored
    path = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_cycle_finder_names_a_loop_and_passes_a_tree():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["a2"], "a2": ["a"]}) == ["a", "a2", "a"]


def test_the_graph_sees_relative_lazy_and_package_imports():
    graph = import_graph()
    # A module-level relative import, a lazy one inside a function, and a package's own __init__.
    assert "instructpart_metric.core" in graph["instructpart_metric.report"]
    assert "instructpart_metric.report" in graph["instructpart_metric.cli"]
    assert "instructpart_dataset.toolbox.extras" in graph["instructpart_dataset"]
    assert "instructpart_dataset.toolbox.cli_errors" in graph["upload"]
    assert len(graph) > 50


def test_no_two_modules_import_each_other_directly_or_in_a_loop():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_tests_import_the_test_helpers():
    """Production code (the packages, upload.py, bench/) builds tiny models with `pisa_model.tiny`; a
    `pisa_model.testing` module, if one comes back, is for tests only."""
    files = dict(project_modules())
    bench = os.path.join(ROOT, "bench")
    files.update({f"bench/{name}": os.path.join(bench, name) for name in os.listdir(bench) if name.endswith(".py")})
    offenders = []
    for module, path in sorted(files.items()):
        names = imported_names(path, module, path.endswith("__init__.py"))
        if any(name == "pisa_model.testing" or name.startswith("pisa_model.testing.") for name in names):
            offenders.append(module)
    assert offenders == []
