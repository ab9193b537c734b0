"""The core stays messenger-agnostic."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("telegram", "aiogram", "adapters", "httpx", "aiohttp")
# The bot's own HTTP server (webhook, health, metrics) is the one core module that serves
# HTTP; it is imported only when the server runs, which the second test checks.
HTTP_SERVER = {"bot/web.py": {"aiohttp"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_source_imports_no_messenger_library() -> None:
    offenders = {
        name: sorted(bad)
        for path in (ROOT / "bot").rglob("*.py")
        if (name := path.relative_to(ROOT).as_posix())
        and (bad := _imports(path) & set(FORBIDDEN) - HTTP_SERVER.get(name, set()))
    }
    assert offenders == {}


def test_importing_the_core_loads_no_messenger_library() -> None:
    code = (
        "import sys, bot.app, bot.cli, bot.routing\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
