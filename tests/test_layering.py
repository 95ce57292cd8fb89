"""The import rules of the package: the floor and the lenses point down, train/ never reaches the analyses, and no
module imports itself back through others. Read from the source (imports inside functions included)."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lensjax")


def module_name(path: str) -> str:
  relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")].replace(os.sep, ".")
  return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def lensjax_imports() -> dict[str, set[str]]:
  """{module: the lensjax modules it imports anywhere in its source}."""
  graph = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      module, found = module_name(path), set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
          found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
          found.add(node.module)
          found |= {f"{node.module}.{alias.name}" for alias in node.names}
      graph[module] = {m for m in found if m.startswith("lensjax")}
  # `from lensjax.x import y` names a module only when lensjax/x/y.py exists.
  return {m: {i for i in imports if i in graph} - {m} for m, imports in graph.items()}


GRAPH = lensjax_imports()


def imports_under(module: str, prefixes: tuple[str, ...]) -> set[str]:
  return {i for i in GRAPH[module] if i.startswith(prefixes)}


@pytest.mark.parametrize("layer, forbidden", [
    ("lensjax.ops", ("lensjax.",)),  # jax, numpy (and optax's state type) only
    ("lensjax.stats", ("lensjax.train", "lensjax.analysis", "lensjax.report", "lensjax.cli", "lensjax.io",
                       "lensjax.hessian", "lensjax.runner", "lensjax.sweep", "lensjax.bench")),
    ("lensjax.config", ("lensjax.model", "lensjax.data", "lensjax.stats", "lensjax.train", "lensjax.analysis",
                        "lensjax.report", "lensjax.io", "lensjax.cli")),
    ("lensjax.model", ("lensjax.stats", "lensjax.train", "lensjax.analysis", "lensjax.report", "lensjax.data")),
    ("lensjax.train", ("lensjax.analysis", "lensjax.report", "lensjax.hessian", "lensjax.cli", "lensjax.runner",
                       "lensjax.sweep", "lensjax.bench")),
    ("lensjax.hessian", ("lensjax.train", "lensjax.analysis", "lensjax.report", "lensjax.cli")),
    # The death analysis is NumPy on arrays: its CLI reads the run and hands them over.
    ("lensjax.analysis.deaths", ("lensjax.model", "lensjax.train", "lensjax.stats", "lensjax.io", "lensjax.report",
                                 "lensjax.cli", "lensjax.hessian", "lensjax.data", "lensjax.config", "lensjax.runner")),
])
def test_layers_import_nothing_above_them(layer, forbidden):
  modules = [m for m in GRAPH if m == layer or m.startswith(layer + ".")]
  assert modules, layer
  allowed_inside = lambda i: i == layer or i.startswith(layer + ".") or i.startswith("lensjax.ops")
  bad = {m: sorted(i for i in imports_under(m, forbidden) if not allowed_inside(i)) for m in modules}
  assert not any(bad.values()), {m: v for m, v in bad.items() if v}


def test_no_module_imports_itself_back():
  cycles = []

  def visit(module, path):
    for nxt in GRAPH[module]:
      if nxt == path[0]:
        cycles.append(path + [nxt])
      elif nxt not in path and len(path) < 12:
        visit(nxt, path + [nxt])

  for module in sorted(GRAPH):
    visit(module, [module])
  # A package's __init__ that re-exports its own modules is not a cycle of logic.
  real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") or c[0].startswith(m + ".") for m in c)]
  assert not real, real[:5]
