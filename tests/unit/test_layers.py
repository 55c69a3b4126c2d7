"""The layers of docs/ARCHITECTURE.md, read from the code's own imports: nothing imports a layer above its own.

From the bottom up: protocol → commands, events → engine, projections → replay, gateway → jetbook (the shell).
The pure core also imports nothing that does I/O, reads a clock or draws randomness.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each top-level package and its layer: a module may import its own layer or a lower one.
LAYER = {
    "protocol": 0,
    "commands": 1,
    "events": 1,
    "framework": 1,  # the interface between the machinery and an application (docs/FRAMEWORK.md)
    "engine": 2,
    "projections": 2,
    "replay": 3,
    "gateway": 3,  # HTTP and WebSocket over commands, the query service and the log's tail
    "tui": 3,  # the terminal screen and the bots: clients of the gateway, over WebSocket and HTTP
    "jetbook": 4,
    "examples": 5,  # applications of the machinery, with their own thin CLIs on top of the shell
}

# The pure core: decide and evolve, the book, the command parser and the event models.
PURE = [
    "engine/core.py",
    "engine/book.py",
    "engine/state.py",
    "engine/decide.py",
    "engine/evolve.py",
    "commands/model.py",
    "events/model.py",
    "protocol/subjects.py",
    "protocol/shards.py",
    "protocol/reasons.py",
    "protocol/vocab.py",
    "protocol/odds.py",
]
IMPURE = {
    "asyncio", "nats", "sqlite3", "socket", "time", "random", "secrets", "os", "subprocess", "threading",
    "datetime", "uuid", "pathlib", "io", "selectors", "multiprocessing",
}  # fmt: skip


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module name `path` imports, at any depth (a function-level import counts too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


@pytest.mark.parametrize("package", sorted(LAYER))
def test_no_import_runs_up_a_layer(package: str) -> None:
    up = []
    for path in _modules(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in LAYER and LAYER[top] > LAYER[package]:
                up.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not up, "imports that run up a layer:\n" + "\n".join(up)


def test_nothing_below_the_shell_imports_it() -> None:
    """The rule the issue names on its own: engine/, events/, projections/, replay/, commands/ never import jetbook."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for package in LAYER
        if LAYER[package] < LAYER["jetbook"]
        for path in _modules(package)
        for line, name in _imports(path)
        if name.split(".")[0] == "jetbook"
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_does_no_io(module: str) -> None:
    path = ROOT / module
    bad = [f"{module}:{line} imports {name}" for line, name in _imports(path) if name.split(".")[0] in IMPURE]
    assert not bad, "\n".join(bad)


def test_the_pure_core_list_is_the_snapshot_fingerprint() -> None:
    """The files checked for purity are the files whose source a snapshot's core fingerprint covers."""
    from engine.exchange import CORE_MODULES

    assert {m.__name__.replace(".", "/") + ".py" for m in CORE_MODULES} == set(PURE)


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """The checker itself can fail: an import of the shell is found in a file that has one."""
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from jetbook.server import EmbeddedServer\n")
    assert [name for _, name in _imports(sample)] == ["jetbook.server"]


# Pure code of the framework and of the example application: the same rules as the exchange's core.
PURE_APPS = ["framework/pure.py", "examples/ledger/domain.py", "examples/ledger/decider.py"]


@pytest.mark.parametrize("module", PURE_APPS)
def test_the_framework_and_example_cores_do_no_io(module: str) -> None:
    path = ROOT / module
    assert path.exists(), f"{module} is listed as pure but does not exist"
    bad = [f"{module}:{line} imports {name}" for line, name in _imports(path) if name.split(".")[0] in IMPURE]
    assert not bad, "\n".join(bad)
