"""`zhibu run` with no token is a console chat that a script on stdin can drive."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(
    args: list[str], cwd: Path, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        timeout=120,
    )


def test_console_session_from_a_fresh_directory(tmp_path: Path) -> None:
    first = _run(["run"], tmp_path, "/invite investigation\n:quit\n")
    assert first.returncode == 0, first.stderr
    code = re.search(r"\b([A-Z2-9]{10})\b", first.stdout)
    assert code, first.stdout
    script = f":as 张伟\n{code.group(1)}\n1\n/me\n/role 1 admin\n"
    second = _run(["run"], tmp_path, script)
    assert second.returncode == 0, second.stderr
    out = second.stdout
    assert "侦查监督党支部" in out and "欢迎您，张伟" in out
    assert "姓名：张伟" in out
    assert "需要管理员权限" in out
    assert (tmp_path / "zhibu.db").exists()  # the default embedded database
    current = _run(["db", "current"], tmp_path)
    assert "up to date" in current.stdout, current.stdout + current.stderr
