"""The code's shape: one installable package whose import graph has no cycle and only
imports downward, small modules and functions, the original's scripts at the top level,
and an install that adds exactly one import name."""
from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys

import pytest
from conftest import ROOT
from import_graph import ALLOWED, PACKAGE, find_cycle, package_graph, upward_imports

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# the original project's names, kept at the top level of a clone
TOP_LEVEL_SCRIPTS = {"gender_age_classifier", "predict", "models", "datasets"}
COMMANDS = {"gac-train": "--epochs", "gac-predict": "--checkpoint", "gac-export": "onnx", "gac-ensemble": "members"}


def python_files():
    return [p for d in (PACKAGE, "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")] + \
        [ROOT / f"{m}.py" for m in TOP_LEVEL_SCRIPTS]


def test_the_package_has_no_import_cycle_and_imports_only_downward():
    graph = package_graph(ROOT)
    assert len(graph) > 30 and set(ALLOWED) <= {m.split(".")[1] for m in graph if "." in m}
    assert find_cycle(graph) is None, find_cycle(graph)
    assert upward_imports(graph) == []


def test_the_checks_find_a_cycle_and_an_upward_import():
    graph = package_graph(ROOT)
    with_cycle = {**graph, "gender_age.core.images": graph["gender_age.core.images"] | {"gender_age.core.runtime"},
                  "gender_age.core.runtime": graph["gender_age.core.runtime"] | {"gender_age.core.images"}}
    assert find_cycle(with_cycle) in (["gender_age.core.images", "gender_age.core.runtime", "gender_age.core.images"],
                                      ["gender_age.core.runtime", "gender_age.core.images", "gender_age.core.runtime"])
    upward = {**graph, "gender_age.predict.cli": graph["gender_age.predict.cli"] | {"gender_age.train.trainer"}}
    assert upward_imports(upward) == [("gender_age.predict.cli", "gender_age.train.trainer")]
    sideways = {**graph, "gender_age.data.samples": graph["gender_age.data.samples"] | {"gender_age.faces.geometry"}}
    assert upward_imports(sideways) == [("gender_age.data.samples", "gender_age.faces.geometry")]


def test_the_top_level_scripts_are_thin_and_import_only_the_package():
    existing = {p.stem for p in ROOT.glob("*.py")}
    assert existing == TOP_LEVEL_SCRIPTS, existing ^ TOP_LEVEL_SCRIPTS
    for name in TOP_LEVEL_SCRIPTS:
        tree = ast.parse((ROOT / f"{name}.py").read_text())
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], name
        modules = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert modules == {PACKAGE}, (name, modules)


def test_modules_and_functions_are_small():
    too_long = []
    for path in python_files():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append((str(path.relative_to(ROOT)), text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append((f"{path.relative_to(ROOT)}:{node.name}", length))
    assert too_long == []


@pytest.mark.parametrize("script,words", [("gender_age_classifier.py", "--epochs"), ("predict.py", "--checkpoint")])
def test_the_original_scripts_run_from_the_clone(script, words):
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and words in r.stdout, r.stderr[-1000:]


def test_pip_install_adds_one_import_name_and_the_console_commands(tmp_path):
    """pip install . into a fresh virtualenv (--no-deps, on top of this one's packages): the
    distribution's top-level names are the package alone, and each console command's --help
    runs from a folder without the sources."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / PACKAGE, src / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", *(f"{m}.py" for m in TOP_LEVEL_SCRIPTS)):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "benchmarks", src / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the test virtualenv's packages (torch, pip, setuptools ...) are visible to the new one
    with open(os.path.join(purelib, "test-venv.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (dist,) = [p for p in os.listdir(purelib) if p.startswith("gender_age_classifier-") and p.endswith(".dist-info")]
    assert open(os.path.join(purelib, dist, "top_level.txt")).read().split() == [PACKAGE]
    record = open(os.path.join(purelib, dist, "RECORD")).read().splitlines()
    installed = {line.split(",")[0].split("/")[0] for line in record}
    assert {n for n in installed if not n.startswith("..")} == {PACKAGE, dist}, installed
    assert sorted(set(os.listdir(purelib)) - {"test-venv.pth", dist, "__pycache__"}) == [PACKAGE]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command, words in COMMANDS.items():
        r = subprocess.run([str(venv / "bin" / command), "--help"], capture_output=True, text=True, cwd=elsewhere,
                           env=env)
        assert r.returncode == 0 and words in r.stdout, (command, r.stderr[-1000:])
    # the package came from the install, not from a source folder on the path
    r = subprocess.run([str(py), "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], capture_output=True,
                       text=True, cwd=elsewhere, check=True, env=env)
    assert r.stdout.startswith(purelib)
