"""The house rules a newcomer relies on: small files, short functions, comments that say why rather than history.

Run as a script to check given files: ``python tests/test_layout.py src/harmon/foo.py ...``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
HISTORY = re.compile(r"session [0-9]|(nin|eigh)th|run[0-9]", re.IGNORECASE)


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "assets" not in p.parts)


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {n} lines")
    return out


def long_files(paths: list[Path]) -> list[str]:
    counts = {p: len(p.read_text().splitlines()) for p in paths}
    return [f"{p.relative_to(ROOT)}: {n} lines" for p, n in counts.items() if n > MAX_FILE_LINES]


def history_lines(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if HISTORY.search(line):
                out.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    return out


def package_of(module: str) -> str:
    """harmon.world.scene -> harmon.world; harmon.model -> harmon (the core modules form one package)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "src").with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def private_imports(paths: list[Path]) -> list[str]:
    """`from harmon.x import _name` where harmon.x lies in another package than the importer."""
    out = []
    for path in paths:
        importer = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("harmon"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and package_of(node.module) != package_of(importer):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
    return out


def test_no_module_imports_another_packages_private_names():
    assert private_imports(python_files("src")) == []


def test_no_source_file_over_the_limit():
    assert long_files(python_files("src")) == []


def test_no_function_over_the_limit():
    assert [f for p in python_files("src") for f in long_functions(p)] == []


def test_no_history_in_code_or_tests():
    this = Path(__file__).resolve()
    assert history_lines([p for p in python_files("src") + python_files("tests") if p != this]) == []


def test_ci_runs_the_readmes_own_install_and_test_commands():
    """CI must run what a new user types, so a missing install step fails in CI first."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    install, test = (line.split("  #")[0].strip() for line in block.strip().splitlines()[:2])
    assert install.startswith("pip install") and "+cpu" in install and "whl/cpu" in install
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci and ci.index(install) < ci.index(test)


if __name__ == "__main__":
    files = [Path(a).resolve() for a in sys.argv[1:]] or python_files("src")
    problems = long_files(files) + [f for p in files for f in long_functions(p)] + history_lines(files)
    problems += private_imports([f for f in files if (ROOT / "src") in f.parents])
    print("\n".join(problems) or "ok")
    sys.exit(1 if problems else 0)
