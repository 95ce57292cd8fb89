"""The built wheel: it holds every package and the configs, and an installed lensjax finds a config by name."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO

tomllib = pytest.importorskip("tomllib")


def test_the_package_list_names_every_package_of_the_source_and_the_configs():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  source = {os.path.relpath(root, REPO).replace(os.sep, ".") for root, _, files in os.walk(os.path.join(REPO, "lensjax"))
            if "__init__.py" in files}
  assert set(setuptools["packages"]) == source | {"lensjax.configs"}
  assert setuptools["package-dir"] == {"lensjax.configs": "configs"}


def test_an_installed_wheel_finds_its_configs_by_name(tmp_path):
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), REPO],
                         capture_output=True, text=True, timeout=600)
  offline = ("No matching distribution" in built.stderr or "Could not find a version" in built.stderr)
  if built.returncode != 0 and offline:  # pip builds in isolation: it fetches setuptools from the index
    pytest.skip(f"the wheel's build requirements cannot be fetched here: {built.stderr.strip().splitlines()[-1]}")
  assert built.returncode == 0, built.stderr
  wheel, = glob.glob(str(tmp_path / "dist" / "lensjax-*.whl"))
  target = tmp_path / "site"
  installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
                             capture_output=True, text=True, timeout=300)
  assert installed.returncode == 0, installed.stderr
  assert sorted(name for name in os.listdir(target / "lensjax" / "configs") if name.endswith(".py")) == sorted(
      name for name in os.listdir(os.path.join(REPO, "configs")) if name.endswith(".py"))
  # From a folder without configs/, with the installed copy first on the path (its dependencies are this one's).
  script = ("import lensjax, os; from lensjax.config.files import load_config_file, packaged_configs; "
            "assert lensjax.__file__.startswith(os.environ['TARGET']), lensjax.__file__; "
            "print(packaged_configs()['quickstart'].startswith(os.environ['TARGET']), "
            "load_config_file('gpt2_small').model.num_layers)")
  env = dict(os.environ, PYTHONPATH=str(target), TARGET=str(target))
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["True", "12"]
