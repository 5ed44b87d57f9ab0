"""Static checks of the Slicer extension: UI names, CMake lists, extension descriptions, icon, sample data.

Run: ``PYTHONPATH=SkullVAECompletion:. pytest Testing/test_slicer_packaging.py``
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SkullVAECompletion"
MODULE_FILE = MODULE_DIR / "SkullVAECompletion.py"
UI_FILE = ROOT / "Resources" / "UI" / "SkullVAECompletion.ui"
RUNTIME_RESOURCE_DIRS = ("Icons", "UI", "Models", "SampleData")  # Screenshots are for the catalog only


def _cmakeList(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not found"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [i.replace("${MODULE_NAME}", "SkullVAECompletion") for i in items if i]


def _uiWidgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    missing = used - set(_uiWidgets())
    assert not missing, f"widgets used in SkullVAECompletion.py but absent from the .ui: {sorted(missing)}"


def test_ui_parameter_names_match_the_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SkullVAECompletionParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    names = set()
    for widget in _uiWidgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names.add(prop.find("string").text)
    synced = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "WIDGET_SYNCED_PARAMETERS" for t in n.targets))
    assert names <= fields, f"SlicerParameterName without parameter: {sorted(names - fields)}"
    assert fields <= names | set(synced), f"parameters without a widget: {sorted(fields - names - set(synced))}"
    assert not names & set(synced), "a parameter is either connected by the wrapper or synced by the widget"


def test_cmake_lists_every_script_and_resource_and_nothing_else():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = set(_cmakeList(text, "MODULE_PYTHON_SCRIPTS"))
    onDisk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == onDisk, f"unlisted: {sorted(onDisk - scripts)}; listed but missing: {sorted(scripts - onDisk)}"
    resources = set(_cmakeList(text, "MODULE_PYTHON_RESOURCES"))
    base = ROOT / "Resources"
    present = {
        p.relative_to(base).as_posix()
        for d in RUNTIME_RESOURCE_DIRS
        for p in (base / d).rglob("*")
        if p.is_file() and p.suffix != ".md" and not p.name.startswith(".")
    }
    assert resources == present, f"unlisted: {sorted(present - resources)}; missing: {sorted(resources - present)}"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)


def test_top_level_cmake_has_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text and 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert "add_subdirectory(SkullVAECompletion)" in text


def test_s4ext_has_all_required_fields():
    fields = {}
    for line in (ROOT / "SkullVAE.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    for key in ("scm", "scmurl", "depends", "build_subdirectory", "homepage", "contributors", "category",
                "iconurl", "status", "description", "screenshoturls", "enabled"):
        assert fields.get(key), f"{key} missing or empty"
    assert fields["depends"] == "PyTorch" and fields["category"] == "Segmentation" and fields["enabled"] in "01"


def test_extension_index_json():
    data = json.loads((ROOT / "SkullVAE.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(data) <= allowed
    assert data["build_dependencies"] == ["PyTorch"] and data["category"] == "Segmentation"


def test_icon_is_128_png_and_screenshot_exists():
    png = (ROOT / "Resources" / "Icons" / "SkullVAECompletion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (128, 128)
    assert any((ROOT / "Resources" / "Screenshots").glob("*.png"))


def test_sample_data_checksum_matches():
    sys.path.insert(0, str(MODULE_DIR))
    import SkullVAECompletion as module

    path = ROOT / "Resources" / module.SAMPLE_DATA_FILE
    assert path.is_file(), path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == module.SAMPLE_DATA_SHA256, \
        "update SAMPLE_DATA_SHA256 in SkullVAECompletion.py"


def test_module_imports_without_qt_and_without_torch():
    code = (
        "import sys; import SkullVAECompletion as m; "
        "assert not m.HAVE_SLICER_APP; assert 'torch' not in sys.modules, 'torch imported at module import'; "
        "assert 'qt' not in sys.modules; m.SkullVAECompletionLogic(); print('ok')"
    )
    env = {"PYTHONPATH": f"{MODULE_DIR}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_dependencies_report_missing_packages_outside_slicer(monkeypatch):
    from SkullVAECompletionLib import dependencies

    assert dependencies.missingPackages() == []  # the test environment has everything
    fake = dependencies.Package("surely_not_installed_pkg", "surely-not-installed-pkg>=1")
    monkeypatch.setattr(dependencies, "REQUIRED_PACKAGES", (*dependencies.REQUIRED_PACKAGES, fake))
    with pytest.raises(dependencies.DependencyError, match="surely-not-installed-pkg"):
        dependencies.ensureDependencies()


def test_extension_declares_slicer_5_10_or_later():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    minimum = re.search(r'set\(SkullVAE_MINIMUM_SLICER_VERSION "([\d.]+)"\)', text)
    assert minimum and tuple(int(v) for v in minimum.group(1).split(".")) >= (5, 10)
    # find_package refuses an older Slicer (SlicerConfigVersion.cmake), the explicit check says why
    assert "find_package(Slicer ${SkullVAE_MINIMUM_SLICER_VERSION} REQUIRED)" in text
    check = re.search(r"if\(Slicer_VERSION VERSION_LESS SkullVAE_MINIMUM_SLICER_VERSION\)\s*message\(FATAL_ERROR",
                      text)
    assert check and text.index("find_package(Slicer") < check.start() < text.index("include(${Slicer_USE_FILE})")
    # the catalog entry's schema has no version field; the descriptions say it
    assert "Slicer 5.10 or later" in re.search(r'EXTENSION_DESCRIPTION "([^"]+)"', text).group(1)
    s4ext = (ROOT / "SkullVAE.s4ext").read_text(encoding="utf-8")
    assert "Slicer 5.10 or later" in next(line for line in s4ext.splitlines() if line.startswith("description "))


def test_slicer_check_script_is_executable_and_prints_usage():
    script = ROOT / "scripts" / "slicer_check.sh"
    assert script.stat().st_mode & 0o111, "scripts/slicer_check.sh must be executable"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "usage:" in out.stderr and "SLICER_EXECUTABLE" in out.stderr
    missing = subprocess.run([str(script), "/nonexistent/Slicer"], capture_output=True, text=True, timeout=30,
                             cwd=ROOT / "Testing")
    assert missing.returncode == 2 and "not an executable" in missing.stderr
    text = script.read_text(encoding="utf-8")
    for option in ("--no-splash", "--no-main-window", "--testing", "--additional-module-paths", "--python-code"):
        assert option in text, option
    assert "slicer.selfTests['SkullVAECompletion']()" in text and "mainWindow().grab()" in text


def test_module_categories_use_the_core_module_translation_context():
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert 'self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]' in text
    assert "from slicer.i18n import translate" in text
