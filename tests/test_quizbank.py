"""Question banks: the shipped bank, YAML and spreadsheet loading with every problem
reported by place, versioned storing, and ``zhibu content import`` end to end."""

from __future__ import annotations

import asyncio
import codecs
import csv
import dataclasses
import io
import os
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl import Workbook  # type: ignore[import-untyped]
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import DEFAULT_CONTENT
from bot.db import migrate
from bot.db.engine import create_engine, create_sessionmaker
from bot.db.models import AuditLog, Organisation, Question, QuestionBank, QuestionKind
from bot.quizbank import (
    LETTERS,
    BankError,
    BankSpec,
    QuestionSpec,
    StoreResult,
    answer_letters,
    load_bank_file,
    load_pack_banks,
    load_quiz_definitions,
    parse_answer_letters,
    read_spreadsheet,
    store_bank,
    text_key,
)

ROOT = Path(__file__).resolve().parent.parent
TAGS = {"党章", "入党誓词", "纪律处分条例", "组织生活", "廉洁自律"}
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
HEADER = ["题目", "题型", "A", "B", "C", "D", "答案", "解析", "标签"]
GOOD_ROWS = [
    [
        "预备党员的预备期为（ ）。",
        "单选",
        "六个月",
        "一年",
        "两年",
        "三年",
        "B",
        "党章规定。",
        "党章",
    ],
    [
        "党纪处分包括（ ）。",
        "多选",
        "警告",
        "严重警告",
        "记大过",
        "开除党籍",
        "A、B、D",
        "",
        "纪律处分条例，党章",
    ],
    ["党员有退党的自由。", "判断", "", "", "", "", "√", "党章规定。", "党章"],
    ["“三会一课”中的“一课”是党课。", "判断题", "", "", "", "", "对", "", ""],
]


def _problems(exc: pytest.ExceptionInfo[BankError]) -> list[str]:
    lines = str(exc.value).splitlines()
    assert lines == list(exc.value.problems)
    return lines


# --- the shipped content --------------------------------------------------------------


def test_the_shipped_bank_is_real_and_valid() -> None:
    banks, quizzes = load_pack_banks(DEFAULT_CONTENT)
    (bank,) = banks
    assert bank.code == "party-basics" and len(bank.questions) >= 70
    kinds = Counter(q.kind for q in bank.questions)
    assert set(kinds) == set(QuestionKind)
    assert kinds[QuestionKind.SINGLE] >= 40 and kinds[QuestionKind.MULTIPLE] >= 12
    assert kinds[QuestionKind.TRUE_FALSE] >= 12
    for question in bank.questions:
        assert question.tags and set(question.tags) <= TAGS, question.key
        assert 0 < len(question.explanation) <= 150, question.key
        assert all(len(option) <= 100 for option in question.options), question.key
    assert {tag for q in bank.questions for tag in q.tags} == TAGS
    assert len({q.key for q in bank.questions}) == len(bank.questions)

    assert 2 <= len(quizzes) <= 3
    by_code = {quiz.code: quiz for quiz in quizzes}
    discipline = by_code["discipline-rules"]
    assert discipline.question_count == 20 and discipline.time_limit_minutes == 20
    assert discipline.attempts_allowed == 2
    for quiz in quizzes:
        assert quiz.bank == bank.code
        assert quiz.question_count <= bank.count_with_tags(quiz.tags)
        assert 0 <= quiz.pass_mark <= quiz.excellent_mark <= 100


def test_the_oath_question_quotes_the_oath() -> None:
    (bank,), _ = load_pack_banks(DEFAULT_CONTENT)
    oath = (
        "我志愿加入中国共产党，拥护党的纲领，遵守党的章程，履行党员义务，执行党的决定，"
        "严守党的纪律，保守党的秘密，对党忠诚，积极工作，为共产主义奋斗终身，"
        "随时准备为党和人民牺牲一切，永不叛党。"
    )
    gaps = [q for q in bank.questions if q.key in ("sc-01", "sc-02", "sc-03", "sc-04")]
    for question in gaps:
        right = question.options[question.answer[0]]
        quoted = question.text.split("“")[1].rstrip("”").strip("…")
        assert quoted.replace("（ ）", right) in oath, question.key


# --- YAML -------------------------------------------------------------------------------


def test_yaml_problems_are_all_reported_by_path_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """\
code: Bad Code
title: 测试
colour: red
questions:
  - id: q1
    type: single
    text: 第一题
    options: [甲, 乙, 丙, 丁]
    answer: E
  - id: q2
    type: single
    text: 第二题
    options: [甲, 乙, 甲]
    answer: AB
  - id: q1
    type: multiple
    text: 第三题
    options: [甲, 乙, 丙]
    answer: B
  - id: q4
    type: truefalse
    text: 第四题
    options: [是, 否]
    answer: 也许
  - id: q5
    type: essay
    text: ""
    answer: A
    tags: [党章, 3]
  - id: q6
    type: truefalse
    text: 第一题
    answer: 对
""",
        encoding="utf-8",
    )
    with pytest.raises(BankError) as caught:
        load_bank_file(path)
    problems = _problems(caught)
    expected = [
        f"{path}: colour: unknown field",
        f"{path}: code: 'Bad Code' is not a code",
        f"{path}: questions[0].answer: answer letter E is beyond the 4 options",
        f"{path}: questions[1].options[2]: option C repeats option A",
        f"{path}: questions[1].answer: a single-choice question has exactly one answer, not AB",
        f"{path}: questions[2].answer: a multiple-choice question has at least two answers",
        f"{path}: questions[2].id: same id as questions[0]",
        f"{path}: questions[3].options: a true/false question takes no options",
        f"{path}: questions[3].answer: answer '也许' is neither true nor false",
        f"{path}: questions[4].type: unknown type 'essay'",
        f"{path}: questions[4].text: the question text is empty",
        f"{path}: questions[4].tags[1]: must be text",
        f"{path}: questions[5].text: same text as questions[0]",
    ]
    for line in expected:
        assert any(problem.startswith(line) for problem in problems), (line, problems)
    assert len(problems) == len(expected), problems


def test_yaml_accepts_the_documented_forms(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        """\
code: small
title: 小题库
questions:
  - {id: a, type: single, text: 一, options: [x, y], answer: b, tags: [甲]}
  - {id: b, type: multiple, text: 二, options: [x, y, z], answer: "A, C", tags: 甲、乙}
  - {id: c, type: truefalse, text: 三, answer: false}
  - {id: d, type: 判断, text: 四, options: [对, 错], answer: A}
  - {id: 5, type: truefalse, text: 五, answer: ×}
  - {id: f, type: truefalse, text: 六, options: [正确, 错误], answer: B}
""",
        encoding="utf-8",
    )
    bank = load_bank_file(path)
    a, b, c, d, e, f = bank.questions
    assert (a.answer, b.answer, b.tags) == ((1,), (0, 2), ("甲", "乙"))
    assert c.options == ("对", "错") and c.answer == (1,)
    assert d.kind is QuestionKind.TRUE_FALSE and d.answer == (0,)
    assert e.key == "5" and e.answer == (1,)
    assert f.options == ("对", "错") and f.answer == (1,)
    path.write_text(
        "code: tf\ntitle: t\nquestions:\n"
        "  - {id: a, type: truefalse, text: 一, options: [对, 错], answer: AB}\n",
        encoding="utf-8",
    )
    with pytest.raises(BankError, match=r"questions\[0\]\.answer: answer 'AB' is neither"):
        load_bank_file(path)


def test_unreadable_yaml_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("code: [unclosed\n", encoding="utf-8")
    with pytest.raises(BankError) as caught:
        load_bank_file(path)
    (line,) = _problems(caught)
    assert line.startswith(f"{path}: not valid YAML")
    with pytest.raises(BankError, match="not found"):
        load_bank_file(tmp_path / "missing.yaml")


def _small_bank(code: str = "small") -> BankSpec:
    questions = tuple(
        QuestionSpec(
            key=f"k{i}",
            kind=QuestionKind.SINGLE,
            text=f"题{i}",
            options=("甲", "乙"),
            answer=(0,),
            explanation="",
            tags=("甲",) if i < 3 else ("乙",),
        )
        for i in range(5)
    )
    return BankSpec(code, "小题库", "test", questions)


def test_quiz_definitions_are_checked_against_the_banks(tmp_path: Path) -> None:
    path = tmp_path / "quizzes.yaml"
    path.write_text(
        """\
quizzes:
  - {code: ok, title: 好, bank: small, tags: [甲], question_count: 3, open_days: 7}
  - {code: ok, title: 重复, bank: small, question_count: 5, open_days: 7}
  - {code: many, title: 多, bank: small, tags: [甲], question_count: 4, open_days: 7}
  - {code: where, title: 无, bank: nowhere, question_count: 1, open_days: 7}
  - {code: marks, title: 分, bank: small, question_count: 1, open_days: 7, pass_mark: 95}
  - {code: odd, title: 怪, bank: small, tags: [丙], question_count: 1, open_days: 0,
     explanations: sometimes, colour: red}
""",
        encoding="utf-8",
    )
    with pytest.raises(BankError) as caught:
        load_quiz_definitions(path, {"small": _small_bank()})
    problems = _problems(caught)
    expected = [
        f"{path}: quizzes[1].code: 'ok' is also the code of quizzes[0]",
        f"{path}: quizzes[2].question_count: 4 questions wanted, bank small has 3 with tags 甲",
        f"{path}: quizzes[3].bank: unknown bank 'nowhere' (banks: small)",
        f"{path}: quizzes[4].pass_mark: the pass mark 95 is above the excellent mark 90",
        f"{path}: quizzes[5].open_days:",
        f"{path}: quizzes[5].explanations:",
        f"{path}: quizzes[5].colour:",
    ]
    for line in expected:
        assert any(problem.startswith(line) for problem in problems), (line, problems)
    assert len(problems) == len(expected), problems

    path.write_text(
        "quizzes:\n  - {code: ok, title: 好, bank: small, question_count: 5, open_days: 7}\n",
        encoding="utf-8",
    )
    (quiz,) = load_quiz_definitions(path, {"small": _small_bank()})
    assert (quiz.tags, quiz.pass_mark, quiz.excellent_mark, quiz.attempts_allowed) == (
        (),
        60,
        90,
        1,
    )
    assert quiz.explanations == "end" and quiz.shuffle_options and not quiz.use_polls


def test_a_pack_reports_every_file_and_no_follow_on_noise(tmp_path: Path) -> None:
    assert load_pack_banks(tmp_path) == ((), ())
    folder = tmp_path / "quizzes"
    folder.mkdir()
    (folder / "a.yaml").write_text(
        "code: a\ntitle: A\nquestions:\n  - {id: x, type: single, text: 题, options: [1, 2], answer: C}\n",
        encoding="utf-8",
    )
    (folder / "b.yaml").write_text("code: b\ntitle: B\nquestions: []\n", encoding="utf-8")
    (folder / "quizzes.yaml").write_text(
        "quizzes:\n  - {code: q, title: Q, bank: a, question_count: 1, open_days: 0}\n",
        encoding="utf-8",
    )
    with pytest.raises(BankError) as caught:
        load_pack_banks(tmp_path)
    problems = _problems(caught)
    assert problems[0].startswith(f"{folder / 'a.yaml'}: questions[0].answer: answer letter C")
    assert problems[1].startswith(f"{folder / 'b.yaml'}: questions: must be a list")
    # Bank a did not load, so "unknown bank a" would be noise; the real problem is kept.
    assert problems[2].startswith(f"{folder / 'quizzes.yaml'}: quizzes[0].open_days:")
    assert len(problems) == 3


# --- spreadsheets -----------------------------------------------------------------------


def _xlsx(path: Path, rows: Sequence[Sequence[object]]) -> Path:
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "题库"
    for row in rows:
        sheet.append(list(row))
    workbook.create_sheet("说明").append(["这一页不读"])
    workbook.save(path)
    return path


def test_an_xlsx_with_chinese_headers_reads(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["2026年党章知识题库"],  # a title line above the header
        ["序号", *HEADER],
    ]
    rows += [[n, *row] for n, row in enumerate(GOOD_ROWS, 1)]
    rows.insert(4, [])  # a blank row
    rows.append([99])  # numbered in advance, never filled
    path = _xlsx(tmp_path / "题库.xlsx", rows)
    bank = read_spreadsheet(path, code="party-rules")
    assert (bank.code, bank.title, len(bank.questions)) == ("party-rules", "题库", 4)
    single, multiple, true_false, lesson = bank.questions
    assert single.kind is QuestionKind.SINGLE and single.answer == (1,)
    assert single.options == ("六个月", "一年", "两年", "三年")
    assert multiple.answer == (0, 1, 3) and multiple.tags == ("纪律处分条例", "党章")
    assert true_false.options == ("对", "错") and true_false.answer == (0,)
    assert lesson.kind is QuestionKind.TRUE_FALSE and lesson.tags == ()
    assert single.key == text_key("预备党员的预备期为（ ）。")
    # The same sheet read again gives the same keys and digests.
    again = read_spreadsheet(path, code="party-rules", title="党章题库")
    assert again.title == "党章题库"
    assert [(q.key, q.digest()) for q in again.questions] == [
        (q.key, q.digest()) for q in bank.questions
    ]


def test_english_headers_and_excel_values(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        ["Question", "Type", "Option A", "Option B", "Option C", "Answer", "Explanation", "Tags"],
        ["Pick one", "single", 1921, 1949, 1978, "a", "", "history; dates"],
        ["Is it so?", "truefalse", None, None, None, True, None, None],
    ]
    bank = read_spreadsheet(_xlsx(tmp_path / "en.xlsx", rows), code="en", title="English")
    pick, so = bank.questions
    assert pick.options == ("1921", "1949", "1978") and pick.answer == (0,)
    assert pick.tags == ("history", "dates")
    assert so.answer == (0,)


def test_a_bad_xlsx_reports_every_problem_by_row_and_column(tmp_path: Path) -> None:
    rows = [
        HEADER,
        GOOD_ROWS[0],
        ["没有答案的题", "单选", "甲", "乙", "", "", "", "", ""],  # row 3
        ["答案超出选项", "单选", "甲", "乙", "丙", "", "E", "", ""],  # row 4
        ["题型不认识", "问答", "甲", "乙", "", "", "A", "", ""],  # row 5
        ["", "单选", "甲", "乙", "", "", "A", "", ""],  # row 6
        ["预备党员的预备期为（ ）。", "单选", "半年", "一年", "", "", "B", "", ""],  # row 7
        ["多选只有一个答案", "多选", "甲", "乙", "丙", "", "B", "", ""],  # row 8
        ["选项中间空了", "单选", "甲", "", "丙", "", "A", "", ""],  # row 9
        ["判断写了别的", "判断", "", "", "", "", "是", "", ""],  # row 10
    ]
    path = _xlsx(tmp_path / "bad.xlsx", rows)
    with pytest.raises(BankError) as caught:
        read_spreadsheet(path, code="bad")
    problems = _problems(caught)
    expected = [
        f"{path}:row 3:column G (答案): the answer is empty",
        f"{path}:row 4:column G (答案): answer letter E is beyond the 3 options",
        f"{path}:row 5:column B (题型): unknown type '问答'",
        f"{path}:row 6:column A (题目): the question text is empty",
        f"{path}:row 7:column A (题目): same question as row 2",
        f"{path}:row 8:column G (答案): a multiple-choice question has at least two answers",
        f"{path}:row 9:column D (B): option B is empty",
        f"{path}:row 10:column G (答案): answer '是' is neither true nor false",
    ]
    for line in expected:
        assert any(problem.startswith(line) for problem in problems), (line, problems)
    assert len(problems) == len(expected), problems


def test_a_sheet_without_the_needed_columns(tmp_path: Path) -> None:
    path = _xlsx(tmp_path / "cols.xlsx", [["题目", "A", "B", "A"], ["题", "甲", "乙", "丙"]])
    with pytest.raises(BankError) as caught:
        read_spreadsheet(path, code="Not OK")
    problems = _problems(caught)
    assert problems[0].startswith(f"{path}: bank code 'Not OK'")
    assert problems[1] == f"{path}:row 1:column D (A): the same column as column B"
    assert problems[2].startswith(f"{path}:row 1: no 题型 column")
    assert problems[3].startswith(f"{path}:row 1: no 答案 column")
    not_excel = tmp_path / "fake.xlsx"
    not_excel.write_bytes(b"not a zip")
    with pytest.raises(BankError, match=r"fake\.xlsx: not a readable \.xlsx workbook"):
        read_spreadsheet(not_excel, code="x")
    with pytest.raises(BankError, match=r"save as \.xlsx or \.csv"):
        read_spreadsheet(tmp_path / "old.xls", code="x")


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize(
    "encoding", ["utf-8-sig", "gb18030", "utf-8", "utf-16"], ids=lambda e: str(e)
)
def test_csv_in_the_encodings_excel_writes(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "题库.csv"
    path.write_bytes(_csv_text([HEADER, *GOOD_ROWS]).encode(encoding))
    if encoding == "utf-8-sig":
        assert path.read_bytes().startswith(codecs.BOM_UTF8)
    bank = read_spreadsheet(path, code="csv")
    assert [q.text for q in bank.questions] == [row[0] for row in GOOD_ROWS]
    assert bank.questions[1].answer == (0, 1, 3)
    xlsx = read_spreadsheet(_xlsx(tmp_path / "same.xlsx", [HEADER, *GOOD_ROWS]), code="csv")
    assert [q.digest() for q in bank.questions] == [q.digest() for q in xlsx.questions]


def test_a_bad_csv_row_is_reported_by_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    rows = [HEADER, GOOD_ROWS[0], ["题", "单选", "甲", "乙", "丙", "丁", "F", "", ""]]
    path.write_bytes(_csv_text(rows).encode("gb18030"))
    with pytest.raises(BankError) as caught:
        read_spreadsheet(path, code="bad")
    assert _problems(caught) == [
        f"{path}:row 3:column G (答案): answer letter F is beyond the 4 options"
    ]


# --- the answer-letter parser -------------------------------------------------------------


@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))
    )
)
def test_answer_letters_round_trip(case: tuple[int, set[int]]) -> None:
    count, chosen = case
    letters = answer_letters(chosen)
    assert parse_answer_letters(letters, count) == tuple(sorted(chosen))
    assert parse_answer_letters("、".join(letters.lower()), count) == tuple(sorted(chosen))
    assert answer_letters(parse_answer_letters(letters, count)) == letters
    beyond = LETTERS[count:]
    if beyond:
        with pytest.raises(ValueError, match="beyond"):
            parse_answer_letters(letters + beyond[0], count)


@given(st.text(max_size=12), st.integers(0, 6))
def test_any_answer_text_parses_or_says_why(text: str, count: int) -> None:
    try:
        indices = parse_answer_letters(text, count)
    except ValueError as exc:
        assert str(exc)
    else:
        assert indices and all(0 <= i < count for i in indices)
        assert list(indices) == sorted(set(indices))


# --- storing ------------------------------------------------------------------------------


async def _organisation(engine: AsyncEngine, code: str = "org") -> int:
    async with create_sessionmaker(engine).begin() as session:
        org = Organisation(code=code, name="测试组织", created_at=T0)
        session.add(org)
        await session.flush()
        return org.id


async def _store(engine: AsyncEngine, org_id: int, bank: BankSpec, now: datetime) -> StoreResult:
    async with create_sessionmaker(engine).begin() as session:
        return await store_bank(session, org_id, bank, now)


async def _questions(engine: AsyncEngine, code: str, org_id: int | None = None) -> list[Question]:
    async with create_sessionmaker(engine)() as session:
        query = (
            select(Question)
            .join(QuestionBank, QuestionBank.id == Question.bank_id)
            .where(QuestionBank.code == code)
            .order_by(Question.id)
        )
        if org_id is not None:
            query = query.where(QuestionBank.organisation_id == org_id)
        return list((await session.scalars(query)).all())


async def test_the_shipped_bank_stores_and_reloads_unchanged(engine: AsyncEngine) -> None:
    org_id = await _organisation(engine)
    (bank,), _ = load_pack_banks(DEFAULT_CONTENT)
    first = await _store(engine, org_id, bank, T0)
    assert first == StoreResult(added=len(bank.questions), changed=0, retired=0, unchanged=0)
    second = await _store(engine, org_id, bank, T0 + timedelta(days=1))
    assert second == StoreResult(added=0, changed=0, retired=0, unchanged=len(bank.questions))
    rows = await _questions(engine, bank.code)
    assert len(rows) == len(bank.questions) and all(row.active for row in rows)
    stored = {row.key: row for row in rows}
    for spec in bank.questions:
        row = stored[spec.key]
        assert (row.kind, row.text, row.options, row.answer, row.tags) == (
            spec.kind.value,
            spec.text,
            list(spec.options),
            list(spec.answer),
            list(spec.tags),
        )


async def test_store_bank_versions_changes_and_retires(engine: AsyncEngine) -> None:
    org_id = await _organisation(engine)
    other_org = await _organisation(engine, "other")
    bank = _small_bank()
    assert (await _store(engine, org_id, bank, T0)).added == 5
    await _store(engine, other_org, bank, T0)  # the same code in another organisation

    edited = list(bank.questions)
    edited[1] = dataclasses.replace(edited[1], answer=(1,))
    result = await _store(engine, org_id, BankSpec("small", "新标题", "v2", tuple(edited)), T0)
    assert result == StoreResult(added=0, changed=1, retired=0, unchanged=4)
    k1 = {row.version: row for row in await _questions(engine, "small", org_id) if row.key == "k1"}
    assert set(k1) == {1, 2}
    assert not k1[1].active and k1[1].answer == [0]
    assert k1[2].active and k1[2].answer == [1] and k1[2].digest == edited[1].digest()

    dropped = BankSpec("small", "新标题", "v3", tuple(edited[:4]))
    result = await _store(engine, org_id, dropped, T0)
    assert result == StoreResult(added=0, changed=0, retired=1, unchanged=4)
    back = BankSpec("small", "新标题", "v4", tuple(edited))
    assert await _store(engine, org_id, back, T0) == StoreResult(1, 0, 0, 4)

    async with create_sessionmaker(engine)() as session:
        banks = (await session.scalars(select(QuestionBank).order_by(QuestionBank.id))).all()
        assert [(b.organisation_id, b.title) for b in banks] == [
            (org_id, "新标题"),
            (other_org, "小题库"),
        ]
        active = await session.scalar(
            select(func.count())
            .select_from(Question)
            .where(Question.bank_id == banks[0].id, Question.active)
        )
        total = await session.scalar(
            select(func.count()).select_from(Question).where(Question.bank_id == banks[0].id)
        )
    assert (active, total) == (5, 6)  # never deleted: k1 has two versions


# --- the command line ---------------------------------------------------------------------


async def _zhibu(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZHIBU_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        *args,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), "ZHIBU_LOG_LEVEL": "WARNING", **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_content_import_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {"ZHIBU_DATABASE__URL": url}
    sheet = _xlsx(tmp_path / "题库.xlsx", [HEADER, *GOOD_ROWS])
    code, _, err = await _zhibu("content", "import", str(sheet), "--bank", "b", cwd=tmp_path, **env)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "has no schema" in lines[0], err
    assert "zhibu db upgrade" in lines[0]

    await migrate.upgrade(url)
    code, out, err = await _zhibu(
        "content",
        "import",
        str(sheet),
        "--bank",
        "party-rules",
        "--title",
        "党章题库",
        cwd=tmp_path,
        **env,
    )
    assert code == 0, err
    assert "4 added, 0 changed, 0 retired, 0 unchanged" in out

    code, out, err = await _zhibu(
        "content", "import", str(sheet), "--bank", "party-rules", cwd=tmp_path, **env
    )
    assert code == 0 and "0 added, 0 changed, 0 retired, 4 unchanged" in out, err

    edited = [list(row) for row in GOOD_ROWS[:3]]
    edited[0][7] = "党章规定，预备党员的预备期为一年。"
    _xlsx(sheet, [HEADER, *edited])
    code, out, err = await _zhibu(
        "content", "import", str(sheet), "--bank", "party-rules", "--dry-run", cwd=tmp_path, **env
    )
    assert code == 0 and "0 added, 1 changed, 1 retired, 2 unchanged" in out and "dry run" in out
    code, out, err = await _zhibu(
        "content", "import", str(sheet), "--bank", "party-rules", cwd=tmp_path, **env
    )
    assert code == 0 and "0 added, 1 changed, 1 retired, 2 unchanged" in out, err

    bad = _xlsx(
        tmp_path / "bad.xlsx",
        [HEADER, GOOD_ROWS[0], ["题", "单选", "甲", "乙", "", "", "C", "", ""], ["", "多选"]],
    )
    code, out, err = await _zhibu(
        "content", "import", str(bad), "--bank", "party-rules", cwd=tmp_path, **env
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and out == ""
    assert lines[0].startswith(f"{bad}:row 3:column G (答案): answer letter C is beyond")
    assert lines[1].startswith(f"{bad}:row 4:column A (题目): the question text is empty")
    assert lines[-1] == f"Nothing imported: 4 problems in {bad}", lines

    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            audits = (
                await session.scalars(
                    select(AuditLog).where(AuditLog.action == "bank.import").order_by(AuditLog.id)
                )
            ).all()
            bank = await session.scalar(select(QuestionBank))
            assert bank is not None and bank.title == "题库"
            org = await session.get_one(Organisation, bank.organisation_id)
        rows = await _questions(engine, "party-rules")
    finally:
        await engine.dispose()
    assert org.code == "county-procuratorate"  # the configured content pack's
    assert [a.target for a in audits] == ["party-rules"] * 3  # not the dry run, not the bad file
    assert [
        (a.detail["added"], a.detail["changed"], a.detail["retired"], a.detail["unchanged"])
        for a in audits
    ] == [(4, 0, 0, 0), (0, 0, 0, 4), (0, 1, 1, 2)]
    assert len(rows) == 5 and sum(row.active for row in rows) == 3


async def test_content_import_of_a_yaml_bank(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    await migrate.upgrade(url)
    shipped = str(DEFAULT_CONTENT / "quizzes" / "party-basics.yaml")
    code, out, err = await _zhibu(
        "content", "import", shipped, cwd=tmp_path, ZHIBU_DATABASE__URL=url
    )
    assert code == 0 and "bank party-basics" in out and " 0 unchanged" in out, err
    code, _, err = await _zhibu(
        "content", "import", shipped, "--bank", "other", cwd=tmp_path, ZHIBU_DATABASE__URL=url
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "'party-basics'" in err
    code, _, err = await _zhibu(
        "content", "import", "sheet.csv", cwd=tmp_path, ZHIBU_DATABASE__URL=url
    )
    assert code == 2 and "--bank" in err
