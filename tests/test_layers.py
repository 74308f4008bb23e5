"""The package's parts point one way (imports inside functions and module names in strings count):
front ends above the engine, the engine above images and models, no circle between parts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_TOOL = Path(__file__).resolve().parent.parent / "tools" / "package_graph.py"
_spec = importlib.util.spec_from_file_location("package_graph", _TOOL)
graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(graph)

FRONT_ENDS = {"cli", "__main__", "commands", "chat", "batch", "eval", "serve", "keepalive", "render", "logs",
              "setup", "options"}


@pytest.fixture(scope="module")
def arrows():
    return graph.part_arrows()


def test_no_circle_between_parts(arrows):
    floors = graph.floors(arrows)  # raises on a circle, naming it
    assert floors["cli"] > floors["commands"] > floors["engine"] > floors["images"]


@pytest.mark.parametrize("part,never", [
    ("engine", FRONT_ENDS),
    ("images", FRONT_ENDS | {"engine", "models", "wire"}),
    ("models", FRONT_ENDS | {"engine", "images", "wire"}),
    ("wire", FRONT_ENDS | {"engine"}),
])
def test_lower_parts_never_import_upward(arrows, part, never):
    assert not arrows[part] & never, f"{part} imports {sorted(arrows[part] & never)}"


def test_the_reader_sees_imports_in_functions_and_strings(tmp_path):
    pkg = tmp_path / "dsvl_cli"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("def f():\n    from dsvl_cli import high\n")
    (pkg / "high.py").write_text("SERVER = ['python', '-m', 'dsvl_cli.low']\n")
    found = graph.part_arrows(tmp_path)
    assert found == {"low": {"high"}, "high": {"low"}}
    with pytest.raises(ValueError, match="circle"):
        graph.floors(found)
