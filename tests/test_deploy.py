"""The files in deploy/ agree with the code and with each other, and nginx accepts (and
correctly applies) the site configuration.

No container engine and no running systemd here: the Dockerfile and compose file are
checked by reading them, the units with ``systemd-analyze verify`` where it exists, and
the nginx site by running the real nginx in front of two loopback workers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from pydantic import BaseModel

from bot.config import ENV_PREFIX, Settings
from tests import nginx_site as nginx_site_files

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_ZHIBU = "/opt/zhibu/.venv/bin/zhibu"

# Settings other branches add (webhook mode; the chart font). The deploy files already
# use them; empty this set when they exist in bot/config.py (a test below says when).
PENDING_SETTINGS: frozenset[str] = frozenset()
_ENV_LINE = re.compile(r"^#?\s*(ZHIBU_[A-Z0-9_]+)=(.*)$")


def _setting_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        env = prefix + name.upper()
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _setting_names(annotation, env + "__")
        else:
            names.add(env)
    return names


SETTINGS = frozenset(_setting_names(Settings))


def _env_example() -> dict[str, str]:
    """Settings in the example, set (NAME=value) or deliberately unset (# NAME=value)."""
    found: dict[str, str] = {}
    for line in (DEPLOY / "zhibu.env.example").read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match:
            assert match[1] not in found, f"{match[1]} appears twice"
            found[match[1]] = match[2]
    return found


def _known(name: str) -> bool:
    return name in SETTINGS or name in PENDING_SETTINGS


# --- the example environment ------------------------------------------------------------


def test_the_env_example_documents_every_setting_and_only_settings() -> None:
    documented = set(_env_example())
    assert sorted(SETTINGS - documented) == [], "settings missing from zhibu.env.example"
    assert sorted(documented - SETTINGS - PENDING_SETTINGS) == [], "not settings"


def test_pending_settings_are_still_pending() -> None:
    assert sorted(PENDING_SETTINGS & SETTINGS) == [], (
        "these now exist in bot/config.py: remove them from PENDING_SETTINGS"
    )


def test_the_env_example_is_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env_example().items():
        if name in SETTINGS:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZHIBU_CONTENT_PATH", str(ROOT / "content" / "party"))
    monkeypatch.setenv("ZHIBU_TELEGRAM__TOKEN", "123:abc")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database.url.startswith("postgresql+asyncpg://")
    assert settings.notices.reminder_hours == [24, 1]


# --- Dockerfile and .dockerignore -------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_the_dockerfile_builds_small_and_runs_unprivileged() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    stages = [rest for kw, rest in steps if kw == "FROM"]
    assert len(stages) == 2 and all(s.startswith("python:3.11-slim") for s in stages)
    final = steps[max(i for i, (kw, _) in enumerate(steps) if kw == "FROM") :]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage must drop root"
    assert any(kw == "RUN" and "fonts-noto-cjk" in rest for kw, rest in final)
    assert any(kw == "RUN" and "--no-index" in rest and ".venv" in rest for kw, rest in final)
    (health,) = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert "/healthz" in health
    env = " ".join(rest for kw, rest in final if kw == "ENV")
    assert "ZHIBU_CHARTS__FONT_PATH=/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc" in env
    for name in re.findall(r"(ZHIBU_[A-Z0-9_]+)=", env):
        assert _known(name), name
    content = re.search(r"ZHIBU_CONTENT_PATH=(\S+)", env)
    assert content and any(
        kw == "COPY" and rest.split()[-1] == content[1].removesuffix("/party") for kw, rest in final
    )
    entry = [rest for kw, rest in final if kw in ("ENTRYPOINT", "CMD")]
    assert entry == ['["zhibu"]', '["run"]']


def test_the_build_context_keeps_out_secrets_data_and_caches() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "**/*.db", "**/__pycache__", ".mypy_cache"} <= ignored
    copied = {
        rest.split()[0].split("/")[0]
        for kw, rest in _instructions(DEPLOY / "Dockerfile")
        if kw == "COPY" and not rest.startswith("--")
    }
    assert copied and all((ROOT / name).exists() and name not in ignored for name in copied)


# --- compose ----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_compose_runs_postgres_a_migration_workers_and_nginx() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "migrate", "bot", "nginx"}

    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in _compose()["volumes"]

    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    bot = services["bot"]
    assert bot["command"] == ["run"] and bot["deploy"]["replicas"] >= 2
    assert bot["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for service in (migrate, bot):
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["env_file"] == ["zhibu.env"]
        assert (DEPLOY / "zhibu.env.example").is_file()
        url = service["environment"]["ZHIBU_DATABASE__URL"]
        assert "@postgres:5432/zhibu" in url and "${POSTGRES_PASSWORD" in url
        assert all(_known(name) for name in service["environment"])
    port = bot["environment"]["ZHIBU_WEBHOOK__LISTEN_PORT"]
    assert bot["expose"] == [port]

    nginx = services["nginx"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in nginx["volumes"]}
    assert (DEPLOY / mounts["/etc/nginx/conf.d/default.conf"]).resolve() == (
        DEPLOY / "nginx" / "zhibu.conf"
    )
    workers = (DEPLOY / mounts["/etc/nginx/zhibu-workers.conf"]).read_text(encoding="utf-8")
    assert re.findall(r"^server (\S+)", workers, re.M) == [f"bot:{port}"]
    assert nginx["depends_on"]["bot"]["condition"] == "service_healthy"


# --- systemd ----------------------------------------------------------------------------


@dataclass
class Unit:
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]


def _unit(path: Path) -> Unit:
    """systemd's syntax: sections, repeatable keys, comments with # or ;."""
    unit = Unit()
    current: list[tuple[str, str]] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = unit.sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a key=value line: {line}"
        current.append((key.strip(), value.strip()))
    return unit


UNITS = ("zhibu.service", "zhibu@.service", "zhibu-migrate.service")


@pytest.mark.parametrize("name", UNITS)
def test_units_run_the_venv_zhibu_hardened(name: str) -> None:
    unit = _unit(DEPLOY / name)
    (exec_start,) = unit.get("Service", "ExecStart")
    assert exec_start.split()[0] == VENV_ZHIBU
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert Path(VENV_ZHIBU).name in scripts["project"]["scripts"]
    assert unit.get("Service", "User") == ["zhibu"]
    assert unit.get("Service", "EnvironmentFile") == ["/etc/zhibu/zhibu.env"]
    for key, value in [
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert unit.get("Service", key) == [value], key
    assert unit.get("Service", "ReadWritePaths") == unit.get("Service", "WorkingDirectory")


def test_workers_migrate_first_and_listen_on_their_instance_port() -> None:
    worker = _unit(DEPLOY / "zhibu@.service")
    assert worker.get("Unit", "Requires") == ["zhibu-migrate.service"]
    assert "zhibu-migrate.service" in worker.get("Unit", "After")[0].split()
    environment = worker.get("Service", "Environment")
    assert "ZHIBU_WEBHOOK__LISTEN_PORT=%i" in environment
    assert "ZHIBU_WEBHOOK__LISTEN_HOST=127.0.0.1" in environment
    assert all(_known(item.partition("=")[0]) for item in environment)
    # A port in zhibu.env would override every instance's (EnvironmentFile= wins).
    assert "ZHIBU_WEBHOOK__LISTEN_PORT" not in {
        line.partition("=")[0]
        for line in (DEPLOY / "zhibu.env.example").read_text(encoding="utf-8").splitlines()
    }
    migrate = _unit(DEPLOY / "zhibu-migrate.service")
    assert migrate.get("Service", "Type") == ["oneshot"]
    assert migrate.get("Service", "ExecStart") == [f"{VENV_ZHIBU} db upgrade"]
    ports = re.findall(r"^server 127\.0\.0\.1:(\d+)", _workers_conf(), re.M)
    assert len(ports) >= 2
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f"zhibu@{port}" in readme for port in ports)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    for name in UNITS:
        shutil.copy(DEPLOY / name, tmp_path / name)
    shutil.copy(DEPLOY / "zhibu@.service", tmp_path / "zhibu@8081.service")
    names = ["zhibu.service", "zhibu-migrate.service", "zhibu@8081.service"]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The venv does not exist on this machine; everything else must be clean.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and f"Command {VENV_ZHIBU} is not executable" not in line
    ]
    assert problems == []


# --- nginx ------------------------------------------------------------------------------


_workers_conf = nginx_site_files.workers_conf
needs_nginx = pytest.mark.skipif(
    nginx_site_files.NGINX is None, reason=nginx_site_files.NO_NGINX_REASON
)


@needs_nginx
def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    rendered = nginx_site_files.render(tmp_path, [18081, 18082])
    result = subprocess.run(
        nginx_site_files.command(rendered, "-t"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@dataclass
class Worker:
    port: int
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    """Two stand-in workers that record what reaches them and answer everything."""
    runners, made = [], []
    for _ in range(2):
        worker = Worker(port=0)

        async def record(request: web.Request, worker: Worker = worker) -> web.Response:
            await request.read()
            header = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
            worker.seen.append((request.method, request.path, header))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        worker.port = runner.addresses[0][1]
        runners.append(runner)
        made.append(worker)
    yield made
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def nginx_site(tmp_path: Path, workers: list[Worker]) -> Iterator[nginx_site_files.Rendered]:
    rendered = nginx_site_files.render(tmp_path, [w.port for w in workers])
    with nginx_site_files.running(rendered):
        yield rendered


@needs_nginx
async def test_nginx_publishes_only_the_webhook(
    nginx_site: nginx_site_files.Rendered, workers: list[Worker]
) -> None:
    await nginx_site_files.wait_listening(nginx_site.https_port)
    path = _env_example()["ZHIBU_WEBHOOK__PATH"]
    assert path == nginx_site_files.WEBHOOK_PATH
    secret = "s3cret_token-from-telegram"
    base = f"http://127.0.0.1:{nginx_site.https_port}"
    async with httpx.AsyncClient(base_url=base) as client:
        for update_id in range(6):
            response = await client.post(
                path,
                json={"update_id": update_id},
                headers={"X-Telegram-Bot-Api-Secret-Token": secret},
            )
            assert response.status_code == 200, response.text
        assert (await client.get(path)).status_code == 403
        for hidden in ("/metrics", "/healthz", "/", "/telegram/webhook/../metrics"):
            assert (await client.get(hidden)).status_code == 404, hidden
        too_big = await client.post(path, content=b"x" * (2 * 1024 * 1024))
        assert too_big.status_code == 413
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{nginx_site.http_port}{path}")
        assert response.status_code == 301
        assert response.headers["location"].startswith("https://")

    seen = [entry for worker in workers for entry in worker.seen]
    assert seen == [("POST", path, secret)] * 6, "only the webhook, with its secret, got through"
    assert all(worker.seen for worker in workers), "both workers take updates"
