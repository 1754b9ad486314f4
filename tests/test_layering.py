"""Which package may import which: config <- models <- data <- training, checked two ways.

Reading the source finds every import, including those inside functions; a fresh interpreter
finds what importing a package really loads. The component tables are filled by the component
packages, so a recipe loaded through ``mllm.config`` alone must still find every component.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mllm"


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (``from a import b``
    counts as both ``a`` and ``a.b``, since ``b`` may be a submodule)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _fresh_interpreter(code: str) -> str:
    """Run ``code`` in a new Python from the repository root; its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _registered(kind: str, folder: str) -> set[str]:
    """Names registered with ``@KIND.register("name", ...)`` by the files in ``folder``."""
    pattern = re.compile(rf'@{kind}\.register\("([^"]+)"')
    return {
        name
        for path in (PACKAGE / "models" / folder).glob("*.py")
        for name in pattern.findall(path.read_text())
    }


def test_no_model_module_imports_the_data_package():
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m for m in _imported_modules(path) if _within(m, "mllm.data")
        )
        for path in (PACKAGE / "models").rglob("*.py")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_catalog_imports_no_component():
    imported = _imported_modules(PACKAGE / "models" / "catalog.py")
    assert not [m for m in imported if _within(m, "mllm.models")]


def test_recipe_checks_probe_no_machine():
    imported = _imported_modules(PACKAGE / "config" / "checks.py")
    models = {m for m in imported if _within(m, "mllm.models")}
    assert models <= {"mllm.models.families", "mllm.models.families.FAMILIES"}
    assert not {"torch", "bitsandbytes", "importlib.util"} & imported


def test_importing_every_model_module_loads_no_data_module():
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import mllm.models\n"
        "for info in pkgutil.walk_packages(mllm.models.__path__, 'mllm.models.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mllm.'))))\n"
    )
    loaded = json.loads(_fresh_interpreter(code))
    assert "mllm.models.assembly" in loaded and "mllm.models.catalog" in loaded
    assert [m for m in loaded if _within(m, "mllm.data")] == []
    assert [m for m in loaded if _within(m, "mllm.training")] == []


def test_importing_config_loads_no_model_or_data_module():
    code = (
        "import json, sys\n"
        "import mllm.config, mllm.config.checks\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mllm.'))))\n"
    )
    loaded = json.loads(_fresh_interpreter(code))
    assert [m for m in loaded if not _within(m, "mllm.config")] == ["mllm.registry"]


@pytest.mark.parametrize(
    "first_import",
    ["", "from mllm.models.catalog import PROJECTORS\n"],
    ids=["config-only", "catalog-first"],
)
def test_a_recipe_loaded_through_config_finds_every_component(first_import):
    recipes = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml"))
    code = (
        "import json\n"
        f"{first_import}"
        "from mllm.config import load_recipe\n"
        f"recipes = [load_recipe(path) for path in {recipes!r}]\n"
        "from mllm.models.catalog import PROJECTORS, VISION_TOWERS\n"
        "print(json.dumps({\n"
        "    'projectors': PROJECTORS.names(),\n"
        "    'towers': VISION_TOWERS.names(),\n"
        "    'configs': sorted({type(r.model.projector).__name__ for r in recipes}),\n"
        "}))\n"
    )
    found = json.loads(_fresh_interpreter(code))
    assert set(found["projectors"]) == _registered("PROJECTORS", "projectors")
    assert set(found["towers"]) == _registered("VISION_TOWERS", "vision")
    # Component sections were validated by their own config classes, not the base one.
    assert "QFormerProjectorConfig" in found["configs"]


def test_interop_reads_other_layouts_without_inference_or_training():
    # mllm.load (inference) hands foreign folders to interop; interop must not import back.
    offenders = {
        f"{path.relative_to(REPO)} imports {module}"
        for path in (PACKAGE / "interop").rglob("*.py")
        for module in _imported_modules(path)
        if _within(module, "mllm.inference") or _within(module, "mllm.training")
    }
    assert not offenders, sorted(offenders)
