"""The built wheel installs one top-level name, `fedicu`, and holds every module of the four folders."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("shared", "client", "server", "simulations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):  # a copy: building leaves build/ behind in the tree it builds
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("fedicu-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheels_only_top_level_name_is_fedicu(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fedicu"}
    assert len([t for t in top if t.endswith(".dist-info")]) == 1


def test_every_module_of_the_four_folders_is_in_the_wheel(wheel):
    sources = {f"fedicu/{p.relative_to(ROOT).as_posix()}" for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}
    assert sources - set(wheel.namelist()) == set(), "a package is missing from [tool.setuptools] packages"
