"""Loading study materials (front matter checked by path and field, nothing half-stored)
and storing them as versions on the real database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.content import load_pack, sync_pack
from bot.db.engine import create_sessionmaker
from bot.db.models import Branch, Material, MaterialReceipt, Member, Organisation
from bot.materials import MaterialError, load_material_file, load_materials, store_materials

PACK = Path(__file__).resolve().parents[1] / "content" / "party"
NOW = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
PDF = b"%PDF-1.4\n%tiny\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def pack(tmp_path: Path) -> Path:
    (tmp_path / "pack.yaml").write_text((PACK / "pack.yaml").read_text("utf-8"), "utf-8")
    (tmp_path / "materials").mkdir()
    return tmp_path


def write(pack_path: Path, key: str, front: str, body: str = "正文。") -> Path:
    path = pack_path / "materials" / f"{key}.md"
    path.write_text(f"---\n{front}\n---\n{body}\n", encoding="utf-8")
    return path


def test_the_default_pack_has_sound_materials() -> None:
    specs = {s.key: s for s in load_materials(PACK)}
    assert {"sanhui-yike", "liuda-jilv", "dangzhang-zonggang"} <= set(specs)
    assert len(specs["dangzhang-zonggang"].body) > 7000
    assert specs["sanhui-yike"].attachment == "sanhui-yike-checklist.pdf"
    assert all(s.title and s.summary and s.due_days for s in specs.values())


def test_front_matter_fields(tmp_path: Path) -> None:
    root = pack(tmp_path)
    (root / "materials" / "guide.pdf").write_bytes(PDF)
    write(
        root,
        "guide",
        "title: '  三会一课  '\nsummary: 概要\naudience: [prosecution, prosecution]\n"
        "publish_at: 2026-12-01 09:00\ndue_days: 7\npoints: 3\nattachment: guide.pdf",
        "# 标题\n\n内容",
    )
    [spec] = load_materials(root)
    assert spec.key == "guide" and spec.title == "三会一课"
    assert spec.audience == ("prosecution",)
    # Naive times are the organisation's (Asia/Shanghai): 09:00 there is 01:00 UTC.
    assert spec.publish_at == datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    assert (spec.due_days, spec.points, spec.attachment) == (7, 3, "guide.pdf")
    assert spec.body == "# 标题\n\n内容"
    # A zone in the value wins; absent fields have defaults.
    write(root, "guide", "title: T\npublish_at: '2026-12-01T09:00:00+00:00'")
    [spec] = load_materials(root)
    assert spec.publish_at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert (spec.audience, spec.due_days, spec.points, spec.attachment) == ((), None, 0, None)


def test_every_problem_is_reported_by_path_and_field(tmp_path: Path) -> None:
    root = pack(tmp_path)
    (root / "materials" / "fake.pdf").write_bytes(b"not a pdf")
    (root / "materials" / "notes.txt").write_text("x")
    bad = write(
        root,
        "bad",
        "title: ''\naudience: [nowhere]\npublish_at: 2026-12-01\ndue_days: -1\n"
        "points: many\nattachment: fake.pdf\ncolour: red",
        "",
    )
    missing = write(root, "missing", "title: 附件缺失\nattachment: ../secret.pdf")
    nofront = root / "materials" / "no-front.md"
    nofront.write_text("# 没有 front matter\n", encoding="utf-8")
    wrongtype = write(root, "wrong-type", "title: 附件\nattachment: notes.txt")
    badkey = write(root, "bad key", "title: 名字")
    with pytest.raises(MaterialError) as caught:
        load_materials(root)
    problems = caught.value.problems
    expected = [
        (bad, "title"),
        (bad, "audience"),
        (bad, "publish_at"),
        (bad, "due_days"),
        (bad, "points"),
        (bad, "attachment"),
        (bad, "colour"),
        (bad, "(body)"),
        (missing, "attachment"),
        (nofront, "(front matter)"),
        (wrongtype, "attachment"),
        (badkey, "(file name)"),
    ]
    for path, field in expected:
        assert any(p.startswith(f"{path}: {field}: ") for p in problems), (field, problems)
    assert len(problems) == len(expected)
    assert "nowhere" in "\n".join(problems)


def test_yaml_errors_and_non_mappings(tmp_path: Path) -> None:
    root = pack(tmp_path)
    path = write(root, "x", "title: [unclosed")
    with pytest.raises(MaterialError, match=r"x\.md: \(front matter\): not valid YAML"):
        load_material_file(path)
    write(root, "x", "- a list")
    with pytest.raises(MaterialError, match="must be a mapping"):
        load_materials(root)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_any_file_loads_or_fails_with_a_material_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "any.md"
    path.write_text(text, encoding="utf-8")
    try:
        spec = load_material_file(path)
    except MaterialError as exc:
        assert exc.problems and all(p.startswith(f"{path}: ") for p in exc.problems)
    else:
        assert spec.title and spec.body


async def _org(session: AsyncSession) -> Organisation:
    return await sync_pack(session, load_pack(PACK), NOW)


async def test_versions_on_the_database(engine: AsyncEngine, tmp_path: Path) -> None:
    root = pack(tmp_path)
    write(root, "a", "title: 甲", "第一版")
    write(root, "b", "title: 乙", "乙的正文")
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        org = await _org(session)
        result = await store_materials(session, org.id, load_materials(root), NOW)
        assert (result.added, result.changed, result.retired, result.unchanged) == (2, 0, 0, 0)
        first_a = await session.scalar(select(Material).where(Material.key == "a"))
        assert first_a is not None and first_a.version == 1
        branch_id = await session.scalar(select(func.min(Branch.id)))
        assert branch_id is not None
        member = Member(organisation_id=org.id, branch_id=branch_id, name="王芳", joined_at=NOW)
        session.add(member)
        await session.flush()
        session.add(MaterialReceipt(material_id=first_a.id, member_id=member.id, read_at=NOW))
    # Unchanged: nothing happens. Changed: a new version, the old one kept inactive with
    # its receipt. Removed: inactive, never deleted.
    async with sessions.begin() as session:
        again = await store_materials(session, org.id, load_materials(root), NOW)
        assert (again.added, again.changed, again.retired, again.unchanged) == (0, 0, 0, 2)
    write(root, "a", "title: 甲", "第二版")
    (root / "materials" / "b.md").unlink()
    async with sessions.begin() as session:
        result = await store_materials(session, org.id, load_materials(root), NOW)
        assert (result.added, result.changed, result.retired, result.unchanged) == (0, 1, 1, 0)
    async with sessions() as session:
        rows = (await session.scalars(select(Material).order_by(Material.id))).all()
        assert [(m.key, m.version, m.active) for m in rows] == [
            ("a", 1, False),
            ("b", 1, False),
            ("a", 2, True),
        ]
        receipt = await session.scalar(select(MaterialReceipt))
        assert receipt is not None and receipt.material_id == first_a.id
    # A removed file that comes back unchanged is active again, not a new version.
    write(root, "b", "title: 乙", "乙的正文")
    async with sessions.begin() as session:
        result = await store_materials(session, org.id, load_materials(root), NOW)
        assert (result.added, result.unchanged) == (1, 1)
        assert len((await session.scalars(select(Material))).all()) == 3


async def test_a_bad_file_stores_nothing(engine: AsyncEngine, tmp_path: Path) -> None:
    root = pack(tmp_path)
    write(root, "good", "title: 好")
    write(root, "bad", "title: 坏\npoints: -3")
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        org = await _org(session)
    with pytest.raises(MaterialError, match=r"bad\.md: points: "):
        specs = load_materials(root)
        async with sessions.begin() as session:  # never reached: validation comes first
            await store_materials(session, org.id, specs, NOW)
    async with sessions() as session:
        assert (await session.scalars(select(Material))).all() == []
