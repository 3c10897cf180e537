"""The layers of ARCHITECTURE.md hold by construction: every module is in a layer, the import-linter contracts
(layers, no import cycle) are kept, and the model-free commands load no deep-learning library."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pipeline
import stages

ROOT = Path(__file__).resolve().parent.parent


def _layers() -> list[list[str]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in doc["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def test_every_module_is_in_a_layer():
    layered = {m for layer in _layers() for m in layer}
    modules = ["stages"] + [m.name for pkg in (pipeline, stages)
                            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    unplaced = [m for m in modules if not any(m == top or m.startswith(top + ".") for top in layered)]
    assert unplaced == [], f"add these modules to a layer of ARCHITECTURE.md and pyproject.toml: {unplaced}"


def test_import_contracts_are_kept():
    """lint-imports: no import goes up a layer, tools do not import each other, no cycle anywhere."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def _import_graph() -> dict[str, set[str]]:
    """Every import arrow between modules of both root packages (module level or inside functions), plus the arrow
    Python adds by itself: importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__``. That implicit arrow is
    left out where the importer lives inside that package (its own package is already being imported)."""
    import grimp

    graph = grimp.build_graph("pipeline", "stages")
    edges: dict[str, set[str]] = {m: set() for m in graph.modules}
    for m in graph.modules:
        for target in graph.find_modules_directly_imported_by(m):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in edges and dep != m and not (m + ".").startswith(dep + "."):
                    edges[m].add(dep)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_across_both_root_packages():
    """import-linter's acyclic contract looks inside one package at a time; this looks across ``pipeline`` and
    ``stages`` together, the implicit package imports included."""
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_a_cycle_through_a_package_init():
    """The shape of the cycle the layer folders removed: a registry ``__init__`` imports a stage, which imports a
    module elsewhere that imports a sibling of that stage (and so, implicitly, the registry again)."""
    edges = {"stages": {"stages.classify"}, "stages.classify": {"pipeline.modelstage"},
             "pipeline.modelstage": {"stages", "stages.base"}, "stages.base": set()}
    assert _cycles(edges) == [["pipeline.modelstage", "stages", "stages.classify"]]


# Imports of dfer's own modules inside a function, each for a reason; any other goes at the top of its module.
IMPORTS_INSIDE_FUNCTIONS = {
    # start-up time: every `dfer` command imports the cli modules; these load matplotlib or torch, for one command
    ("pipeline/cli/finetune.py", "pipeline.finetune"): "torch",
    ("pipeline/cli/folds.py", "pipeline.protocols.folds"): "torch and matplotlib",
    ("pipeline/cli/report.py", "pipeline.report"): "matplotlib",
    ("pipeline/cli/report.py", "pipeline.view"): "matplotlib",
    ("pipeline/cli/run.py", "pipeline.report"): "matplotlib, only with --report",
    ("pipeline/cli/sweep.py", "pipeline.tools.sweep"): "matplotlib",
    ("pipeline/diagnostics/commands.py", "pipeline.diagnostics.socialfusion"): "torch (the cli imports commands)",
    ("stages/expression.py", "pipeline.models.mini_xception"): "torch, in the workers that run the stage",
    # start-up order: a worker sets its thread limits before the stages load cv2 and torch
    ("pipeline/engine/executor.py", "stages"): "after init_worker",
    ("pipeline/engine/executor_ray.py", "stages"): "after _enter",
}


def _imports_inside_functions() -> set[tuple[str, str]]:
    """``(file, module)`` of every import of a ``pipeline``, ``stages`` or ``prompts`` module inside a function."""
    found = set()
    for path in sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("stages/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         ["." * node.level + (node.module or "")] if isinstance(node, ast.ImportFrom) else [])
                found.update((path.relative_to(ROOT).as_posix(), name) for name in names
                             if name.startswith(".") or name.split(".")[0] in ("pipeline", "stages", "prompts"))
    return found


def test_dfer_modules_are_imported_inside_a_function_only_where_listed():
    """An import inside a function hides a dependency: only start-up time or start-up order justify one."""
    found = _imports_inside_functions()
    unlisted = sorted(found - set(IMPORTS_INSIDE_FUNCTIONS))
    assert unlisted == [], ("import these at the top of their module, or add them with the reason to "
                            f"IMPORTS_INSIDE_FUNCTIONS: {unlisted}")
    assert sorted(set(IMPORTS_INSIDE_FUNCTIONS) - found) == [], "no longer imported inside a function: unlist them"


def test_the_in_function_import_check_sees_nested_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "m.py").write_text("import os\n\n\ndef f():\n    import json\n\n    def g():\n"
                              "        from pipeline.core import errors\n        from . import sibling\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _imports_inside_functions() == {("pipeline/m.py", "pipeline.core"), ("pipeline/m.py", ".")}


def _fake_run(root: Path) -> Path:
    from pipeline.engine.rundir import RunDir

    run = RunDir(root)
    run.create()
    labels = ["happy", "sad"]
    run.write_labelset("mine", labels)
    run.write_config("classify:\n  labels: mine\n")
    scores, predictions = run.score_writers(labels)
    for i, true in enumerate(["happy", "sad", "happy", "sad"]):
        s = {"happy": -1.0 - i % 2, "sad": -1.5}
        scores.write({"video": f"v{i}.mp4", "label": true, "labels": labels, "scores": s, "prediction": max(s, key=s.get)})
    scores.close()
    predictions.close()
    run.failure_log().close()
    return root


def test_report_compare_and_config_show_load_neither_torch_nor_transformers(tmp_path):
    a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b")
    freq = tmp_path / "web.csv"
    freq.write_text("label,count\nhappy,900\nsad,40\n")
    script = (
        "import io, json, sys, contextlib\n"
        "from pipeline.cli import main\n"
        "codes = []\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    codes.append(main(['report', {str(a)!r}, '--calibration', 'estimated', '--tau-sweep', '0,1']))\n"
        f"    codes.append(main(['compare', {str(a)!r}, {str(b)!r}]))\n"
        f"    codes.append(main(['compare', '--folds', {str(a)!r}, {str(b)!r}]))\n"
        f"    codes.append(main(['report', {str(b)!r}, '--label-frequency', {str(freq)!r}]))\n"
        "    codes.append(main(['config', 'show', '--set', 'keyframes.k=3']))\n"
        "print(json.dumps({'codes': codes, 'loaded': [m for m in ('torch', 'transformers') if m in sys.modules]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"codes": [0, 0, 0, 0, 0], "loaded": []}


def test_every_registered_backend_implements_the_interface():
    import inspect

    from pipeline.backends import BACKENDS, Backend, backend_class

    for name in BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Backend) and not inspect.isabstract(cls), name


def test_a_backend_that_misses_a_method_cannot_be_made():
    import pytest

    from pipeline.backends import Backend
    from pipeline.backends.base import ModelConfig

    class NoScoring(Backend):
        @classmethod
        def check_available(cls, cfg):
            return None

        def generate(self, prompts, max_new_tokens=None):
            return ["x"] * len(prompts)

        def count_prompt_tokens(self, prompt):
            return 1

        def close(self):
            return None

    with pytest.raises(TypeError, match="score_labels"):
        NoScoring()
    with pytest.raises(ValueError, match="unknown backend 'nope'; backends: transformers, openai, socialfusion, expression"):
        ModelConfig(model="m", backend="nope")
