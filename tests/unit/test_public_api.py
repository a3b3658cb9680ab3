"""The public surface and the core's purity are deliberate: changing them is a decision."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import sagakit

CORE = Path(sagakit.__file__).parent / "core"


def test_public_names_are_a_snapshot() -> None:
    assert sorted(sagakit.__all__) == sorted(
        [
            "DefinitionError",
            "Engine",
            "InvalidInput",
            "InvalidTransition",
            "NonRetryableError",
            "Parallel",
            "RetryPolicy",
            "RetryableError",
            "Saga",
            "SagaError",
            "SagaNotFound",
            "SagaStatus",
            "Settings",
            "StartResult",
            "Step",
            "StepContext",
            "StepKind",
            "StepStatus",
            "System",
            "UnknownSagaType",
            "VersionNotDeployed",
            "adopt",
            "load_settings",
            "saga_task",
        ]
    )


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    allowed = set(sys.stdlib_module_names)
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_sagakit_never_imports_its_examples() -> None:
    package = Path(sagakit.__file__).parent
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "sagakit_examples", f"{path} imports {name}"
        # Nor by name, through importlib: only settings name the default example.
        if path.name != "settings.py":
            assert "sagakit_examples" not in path.read_text(), path


def test_the_examples_use_only_the_public_api() -> None:
    import sagakit_examples

    # sagakit.api.dashboard: the panel registry a register_dashboard hook is given.
    public = {"sagakit", "sagakit.idempotency", "sagakit.api.dashboard", "sagakit.choreography"}
    for path in Path(sagakit_examples.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "sagakit":
                    assert name in public, f"{path.name} imports {name}"


def test_the_layers_hold() -> None:
    """The import-linter contracts in pyproject.toml: the layer rule of the architecture."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 3, done.stdout
