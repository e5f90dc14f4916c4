"""The package's structure holds: no import cycle anywhere, small modules, a torch-free config layer, and family
knowledge only in the registry and each family's own files."""

import re
import subprocess
import sys

import pytest

from helpers import ROOT

PACKAGE = ROOT / "simpletuner_pl"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
FAMILY_FILES = re.compile(r"models/(registry|family|(tiny_|loading_)?(flux|sdxl)(_spec|_planner|_inputs)?)\.py$")


def test_no_import_cycle_anywhere():
    """Module-level and function-level imports alike (grimp reads every import statement)."""
    import grimp

    graph = grimp.build_graph("simpletuner_pl", include_external_packages=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} -> {imported} -> ... -> {module}")
    assert cycles == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 300


def test_every_startup_check_runs_before_torch_is_imported(tmp_path):
    """Config values, the family's rules, files, dataset discovery and model sources: a bad input fails in well
    under a second because none of it imports torch (or Lightning, diffusers, transformers)."""
    code = ("import sys; from simpletuner_pl.config import compose, to_typed; "
            "from simpletuner_pl.preflight import preflight; "
            f"preflight(to_typed(compose(['experiment=demo', 'debug=cpu', 'output_dir={tmp_path}']))); "
            "print(sorted(m for m in ('torch', 'lightning', 'diffusers', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_family_knowledge_lives_in_the_registry_and_the_families_files():
    """Adding a family touches models/registry.py and that family's own files only: no other module names one."""
    mentions = []
    for path in MODULES:
        rel = path.relative_to(PACKAGE).as_posix()
        if FAMILY_FILES.search(rel):
            continue
        for line in path.read_text().splitlines():
            if re.search(r"['\"](flux|sdxl)['\"]|family ==|Flux\w*Model|FluxModule|SDXLModule|UNet2DCondition", line):
                mentions.append(f"{rel}: {line.strip()}")
    assert mentions == ['config/schema.py: family: str = "flux"  # a registered family: '
                        'simpletuner_pl.models.registry.FAMILIES']
