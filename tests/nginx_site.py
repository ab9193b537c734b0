"""The shipped nginx site (deploy/nginx/) on loopback: rendered for given worker ports,
without TLS, and run by the real nginx as an unprivileged child process.

Shared by tests/test_deploy.py (stub workers), tests/test_multiworker.py and
bench/webhook_scaling.py (real ``zhibu run`` workers).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"
# The public webhook location in zhibu.conf; workers must serve ZHIBU_WEBHOOK__PATH here.
WEBHOOK_PATH = "/telegram/webhook"

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
NO_NGINX_REASON = "nginx is not installed (apt install nginx-light)"


def workers_conf() -> str:
    return (NGINX_DIR / "workers.conf").read_text(encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rendered:
    conf: Path
    prefix: Path
    http_port: int
    https_port: int

    @property
    def webhook_url(self) -> str:
        """Where Telegram would post updates: the HTTPS server block, here plain HTTP."""
        return f"http://127.0.0.1:{self.https_port}{WEBHOOK_PATH}"


def render(tmp: Path, worker_ports: Sequence[int], *, worker_processes: int = 1) -> Rendered:
    """The site as shipped, on loopback ports, without TLS, in a minimal nginx.conf."""
    http_port, https_port = free_port(), free_port()
    template = workers_conf()
    servers = re.findall(r"^server 127\.0\.0\.1:\d+.*$", template, re.M)
    assert servers, "workers.conf lists no loopback workers"
    # One line per worker port, each with the options the shipped lines have.
    options = re.sub(r"^server 127\.0\.0\.1:\d+", "", servers[0])
    lines = [f"server 127.0.0.1:{port}{options}" for port in worker_ports]
    (tmp / "workers.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
    site = (NGINX_DIR / "zhibu.conf").read_text(encoding="utf-8")
    assert "include /etc/nginx/zhibu-workers.conf;" in site
    site = site.replace("/etc/nginx/zhibu-workers.conf", str(tmp / "workers.conf"))
    out = []
    for line in site.splitlines():
        directive = line.strip()
        if directive.startswith(("listen [::]", "ssl_")):
            continue
        if directive == "listen 80;":
            line = f"    listen 127.0.0.1:{http_port};"
        elif directive == "listen 443 ssl;":
            line = f"    listen 127.0.0.1:{https_port};"
        out.append(line)
    (tmp / "zhibu.conf").write_text("\n".join(out), encoding="utf-8")
    temp = " ".join(
        f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi")
    )
    (tmp / "nginx.conf").write_text(
        f"worker_processes {worker_processes};\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'};\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log off; {temp} scgi_temp_path {tmp / 'scgi'}; "
        f"include {tmp / 'zhibu.conf'}; }}\n",
        encoding="utf-8",
    )
    return Rendered(tmp / "nginx.conf", tmp, http_port, https_port)


def command(rendered: Rendered, *args: str) -> list[str]:
    assert NGINX is not None, NO_NGINX_REASON
    return [
        NGINX,
        "-p",
        f"{rendered.prefix}/",
        "-e",
        str(rendered.prefix / "error.log"),
        "-c",
        str(rendered.conf),
        *args,
    ]


@contextmanager
def running(rendered: Rendered) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground (``daemon off``) for the duration; stopped after."""
    proc = subprocess.Popen(
        command(rendered, "-g", "daemon off;"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def wait_listening(port: int, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
