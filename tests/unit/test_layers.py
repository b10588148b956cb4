"""What import-linter cannot say about external packages' subpackages: shared/ never imports azure.functions
(only blueprints/ and function_app.py do), nor anything of tests/ or scripts/ (they are not deployed)."""

import ast
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
FORBIDDEN = ("azure.functions", "tests", "scripts")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_shared_never_imports_azure_functions_tests_or_scripts():
    files = sorted(SHARED.rglob("*.py"))
    assert len(files) > 40
    offending = {
        f"{path.relative_to(SHARED.parent)}: {module}"
        for path in files
        for module in imported_modules(path)
        if any(module == name or module.startswith(name + ".") for name in FORBIDDEN)
    }
    assert offending == set()


def test_the_check_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import azure.functions as func\nfrom tests.support import registry\n")
    assert {"azure.functions", "tests.support", "tests.support.registry"} <= imported_modules(sample)
