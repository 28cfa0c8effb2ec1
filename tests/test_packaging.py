"""The code's shape: installable with pip, console commands, and layers that
only import downward (prediction and export never import training code)."""
from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys
import tomllib

from conftest import ROOT

TRAINING = {"gender_age_classifier", "engine", "trainer"}


def top_level_modules() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py") if not p.stem.startswith("bench")}


def project_imports(module: str) -> set[str]:
    """Project modules that ``module`` imports anywhere (top level or inside functions)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & top_level_modules()


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += project_imports(m)
    return seen - {module}


def test_prediction_and_export_import_no_training_code():
    for module in ("predict", "export", "ensemble", "predictor", "inference", "prediction_output", "bench_predict"):
        assert not import_closure(module) & TRAINING, (module, sorted(import_closure(module) & TRAINING))


def test_lower_layers_never_import_higher_ones():
    # models (with its ordinal heads from losses) and losses are pure; runtime, images and samples know nothing of
    # training or prediction (that ONNX prediction loads no torch: test_export.py)
    for module, allowed in {"models": {"losses", "ordinal"}, "losses": {"ordinal"}, "ordinal": set(), "presets": set(),
                            "runtime": {"cores"}, "cores": set(), "images": set(), "plots": {"checkpointing"},
                            "samples": {"images"}}.items():
        assert import_closure(module) <= allowed, (module, import_closure(module))


def test_pyproject_lists_every_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["py-modules"]) == top_level_modules()
    scripts = config["project"]["scripts"]
    assert scripts == {"gac-train": "gender_age_classifier:cli", "gac-predict": "predict:cli",
                       "gac-export": "export:cli", "gac-ensemble": "ensemble:cli"}


def test_pip_install_gives_the_console_commands(tmp_path):
    """pip install . into a fresh virtualenv (--no-deps, on top of this one's packages),
    then each console command's --help, run from a folder without the sources."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md", *(f"{m}.py" for m in top_level_modules())]:
        shutil.copy(ROOT / name, src / name)
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
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command, words in (("gac-train", "--epochs"), ("gac-predict", "--checkpoint"), ("gac-export", "onnx"),
                           ("gac-ensemble", "members")):
        r = subprocess.run([str(venv / "bin" / command), "--help"], capture_output=True, text=True, cwd=elsewhere,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert r.returncode == 0 and words in r.stdout, (command, r.stderr[-1000:])
    # the modules came from the install, not from a source folder on the path
    r = subprocess.run([str(py), "-c", "import predict; print(predict.__file__)"], capture_output=True, text=True,
                       cwd=elsewhere, check=True)
    assert r.stdout.startswith(purelib)
