"""Question banks: authored in YAML in the content pack, or imported from the
spreadsheets secretaries already keep (XLSX or CSV).

Everything is validated before anything is stored. Every problem is collected and
reported at once, by file and field (YAML) or by file, row and column (spreadsheets), so
a secretary can fix a sheet in one pass. Storing is versioned: a question whose content
changed becomes a new row and the old one is made inactive, never edited or deleted,
because recorded answers point at it.

The spreadsheet layout is documented in ``docs/question-banks.md``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import unicodedata
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.content import CODE_PATTERN, ContentProblems
from bot.content import digest as content_digest
from bot.db.models import Question, QuestionBank, QuestionKind

QUIZZES_FOLDER = "quizzes"
QUIZZES_FILE = "quizzes.yaml"
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LETTERS = "ABCDEF"
MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)
MAX_TEXT = 500
MAX_OPTION = 200
MAX_EXPLANATION = 1000
MAX_TAG = 32
MAX_TITLE = 200
MAX_QUESTIONS = 5000
TRUE_FALSE_OPTIONS = ("对", "错")
SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".csv")

_TRUE_WORDS = {"对", "正确", "√", "✓", "✔", "true", "t"}
_FALSE_WORDS = {"错", "错误", "×", "✗", "✘", "false", "f"}
_KINDS = {
    "single": QuestionKind.SINGLE,
    "单选": QuestionKind.SINGLE,
    "单选题": QuestionKind.SINGLE,
    "单项选择": QuestionKind.SINGLE,
    "单项选择题": QuestionKind.SINGLE,
    "multiple": QuestionKind.MULTIPLE,
    "多选": QuestionKind.MULTIPLE,
    "多选题": QuestionKind.MULTIPLE,
    "多项选择": QuestionKind.MULTIPLE,
    "多项选择题": QuestionKind.MULTIPLE,
    "truefalse": QuestionKind.TRUE_FALSE,
    "true/false": QuestionKind.TRUE_FALSE,
    "判断": QuestionKind.TRUE_FALSE,
    "判断题": QuestionKind.TRUE_FALSE,
}
_KIND_HINT = "write 单选, 多选 or 判断 (or single, multiple, truefalse)"
_TAG_SEPARATORS = re.compile(r"[，,;；、\n]")
_ANSWER_SEPARATORS = re.compile(r"[\s,;、/]+")


class BankError(ContentProblems):
    """A bank or quiz file is invalid: one line per problem, naming the file and the
    field (YAML) or the row and column (spreadsheets)."""


@dataclass(frozen=True)
class QuestionSpec:
    key: str
    kind: QuestionKind
    text: str
    options: tuple[str, ...]
    # Indices into ``options`` of the correct choices, ascending.
    answer: tuple[int, ...]
    explanation: str
    tags: tuple[str, ...]

    def digest(self) -> str:
        """A hash of everything a member sees or is scored on; the key is identity, not
        content, so it is left out."""
        content = [
            self.kind.value,
            self.text,
            list(self.options),
            list(self.answer),
            self.explanation,
            list(self.tags),
        ]
        return content_digest(content)


@dataclass(frozen=True)
class BankSpec:
    code: str
    title: str
    source: str
    questions: tuple[QuestionSpec, ...]

    def tags(self) -> set[str]:
        return {tag for q in self.questions for tag in q.tags}

    def count_with_tags(self, tags: Iterable[str]) -> int:
        """How many questions a quiz drawing from ``tags`` can choose from: those with
        any of the tags, or all of them when no tags are given."""
        wanted = set(tags)
        if not wanted:
            return len(self.questions)
        return sum(1 for q in self.questions if wanted & set(q.tags))


@dataclass(frozen=True, kw_only=True)
class QuizSpec:
    """A ready-made quiz from the content pack; ``/quiz`` opens it for a window of
    ``open_days`` days."""

    code: str
    title: str
    bank: str
    tags: tuple[str, ...]
    question_count: int
    shuffle_options: bool = True
    time_limit_minutes: int | None = None
    open_days: int
    attempts_allowed: int = 1
    pass_mark: int = 60
    excellent_mark: int = 90
    explanations: Literal["each", "end", "never"] = "end"
    use_polls: bool = False


@dataclass(frozen=True)
class StoreResult:
    added: int
    changed: int
    retired: int
    unchanged: int


# --- answers ------------------------------------------------------------------------


def parse_answer_letters(raw: str, option_count: int) -> tuple[int, ...]:
    """``"B"`` → ``(1,)``; ``"ACD"``, ``"A,C,D"``, ``"a、c、d"`` → ``(0, 2, 3)``.

    Raises ValueError with a reason fit for a secretary when the answer is empty, uses
    something other than the letters A–F, repeats a letter, or names an option the
    question does not have.
    """
    letters = _ANSWER_SEPARATORS.sub("", unicodedata.normalize("NFKC", raw)).upper()
    if not letters:
        raise ValueError("the answer is empty")
    seen: list[int] = []
    for letter in letters:
        if letter not in LETTERS:
            raise ValueError(
                f"answer {raw.strip()!r} is not written with the option letters A to F"
            )
        index = LETTERS.index(letter)
        if index in seen:
            raise ValueError(f"letter {letter} appears twice in the answer")
        if index >= option_count:
            raise ValueError(f"answer letter {letter} is beyond the {option_count} options")
        seen.append(index)
    return tuple(sorted(seen))


def answer_letters(indices: Iterable[int]) -> str:
    """The inverse of :func:`parse_answer_letters`: ``(0, 2, 3)`` → ``"ACD"``."""
    return "".join(LETTERS[i] for i in sorted(indices))


def parse_true_false(raw: object) -> bool | None:
    """对/错, 正确/错误, √/×, true/false, T/F (any case), or a YAML/Excel boolean."""
    if isinstance(raw, bool):
        return raw
    if not isinstance(raw, str):
        return None
    word = unicodedata.normalize("NFKC", raw).strip().casefold()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def _kind(raw: str) -> QuestionKind | None:
    word = re.sub(r"\s+", "", unicodedata.normalize("NFKC", raw)).casefold()
    return _KINDS.get(word)


def _normal(text: str) -> str:
    """The form two texts are compared in: width-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key(text: str) -> str:
    """A spreadsheet row's key, derived from the question text, so re-importing the same
    sheet (rows reordered or not) finds the same questions."""
    return "q-" + hashlib.sha256(_normal(text).encode("utf-8")).hexdigest()[:24]


# --- one question ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    field: Literal["id", "type", "text", "options", "answer", "explanation", "tags"]
    reason: str
    index: int | None = None


@dataclass
class _RawQuestion:
    """A question as read from a file, before validation; strings already stripped."""

    key: str
    kind: str
    text: str
    options: list[str]
    answer: object  # str, or a bool from YAML
    explanation: str = ""
    tags: list[str] = field(default_factory=list)


def _build(raw: _RawQuestion) -> tuple[QuestionSpec | None, list[_Problem]]:
    problems: list[_Problem] = []
    kind = _kind(raw.kind) if raw.kind else None
    if not raw.kind:
        problems.append(_Problem("type", f"the type is empty; {_KIND_HINT}"))
    elif kind is None:
        problems.append(_Problem("type", f"unknown type {raw.kind!r}; {_KIND_HINT}"))

    if not raw.text:
        problems.append(_Problem("text", "the question text is empty"))
    elif len(raw.text) > MAX_TEXT:
        problems.append(
            _Problem("text", f"the question is {len(raw.text)} characters, at most {MAX_TEXT}")
        )

    options: tuple[str, ...] = tuple(raw.options)
    if kind is QuestionKind.TRUE_FALSE:
        if raw.options:  # written out as 对, 错 (or 正确, 错误) is fine too
            as_words = [parse_true_false(option) for option in raw.options]
            if as_words != [True, False]:
                problems.append(
                    _Problem(
                        "options",
                        "a true/false question takes no options (对 and 错 are added "
                        "automatically)",
                    )
                )
        options = TRUE_FALSE_OPTIONS
    elif kind is not None:
        problems.extend(_option_problems(raw.options))

    answer: tuple[int, ...] = ()
    if raw.answer is None or raw.answer == "":
        problems.append(_Problem("answer", "the answer is empty"))
    elif kind is QuestionKind.TRUE_FALSE:
        value = parse_true_false(raw.answer)
        if value is None and raw.options and isinstance(raw.answer, str):
            # Options written out as A 对, B 错: the letters work too.
            try:
                letters = parse_answer_letters(raw.answer, 2)
            except ValueError:
                letters = ()
            value = letters == (0,) if len(letters) == 1 else None
        if value is None:
            problems.append(
                _Problem(
                    "answer",
                    f"answer {raw.answer!r} is neither true nor false; write 对 or 错 "
                    "(also √/×, 正确/错误, true/false, T/F)",
                )
            )
        else:
            answer = (0,) if value else (1,)
    elif kind is not None:
        if not isinstance(raw.answer, str):
            problems.append(
                _Problem("answer", f"answer {raw.answer!r} must be letters such as B or ACD")
            )
        else:
            try:
                answer = parse_answer_letters(raw.answer, len(raw.options))
            except ValueError as exc:
                problems.append(_Problem("answer", str(exc)))
            else:
                if kind is QuestionKind.SINGLE and len(answer) != 1:
                    problems.append(
                        _Problem(
                            "answer",
                            f"a single-choice question has exactly one answer, not "
                            f"{answer_letters(answer)}",
                        )
                    )
                if kind is QuestionKind.MULTIPLE and len(answer) < 2:
                    problems.append(
                        _Problem(
                            "answer",
                            f"a multiple-choice question has at least two answers, not "
                            f"{answer_letters(answer)} (or make it 单选)",
                        )
                    )

    if len(raw.explanation) > MAX_EXPLANATION:
        problems.append(
            _Problem(
                "explanation",
                f"the explanation is {len(raw.explanation)} characters, at most {MAX_EXPLANATION}",
            )
        )

    tags: list[str] = []
    for index, tag in enumerate(raw.tags):
        if not tag:
            problems.append(_Problem("tags", "a tag is empty", index))
        elif len(tag) > MAX_TAG:
            problems.append(_Problem("tags", f"tag {tag!r} is longer than {MAX_TAG}", index))
        elif tag not in tags:
            tags.append(tag)

    if problems or kind is None:
        return None, problems
    spec = QuestionSpec(
        key=raw.key,
        kind=kind,
        text=raw.text,
        options=options,
        answer=answer,
        explanation=raw.explanation,
        tags=tuple(tags),
    )
    return spec, []


def _option_problems(options: Sequence[str]) -> list[_Problem]:
    problems: list[_Problem] = []
    if len(options) < MIN_OPTIONS:
        problems.append(
            _Problem("options", f"needs at least {MIN_OPTIONS} options, has {len(options)}")
        )
    if len(options) > MAX_OPTIONS:
        problems.append(
            _Problem("options", f"has {len(options)} options, at most {MAX_OPTIONS} (A to F)")
        )
    first_seen: dict[str, int] = {}
    for index, option in enumerate(options[:MAX_OPTIONS]):
        letter = LETTERS[index]
        if not option:
            problems.append(_Problem("options", f"option {letter} is empty", index))
            continue
        if len(option) > MAX_OPTION:
            problems.append(
                _Problem(
                    "options",
                    f"option {letter} is {len(option)} characters, at most {MAX_OPTION}",
                    index,
                )
            )
        same = first_seen.setdefault(_normal(option), index)
        if same != index:
            problems.append(
                _Problem("options", f"option {letter} repeats option {LETTERS[same]}", index)
            )
    return problems


def _duplicates(questions: Sequence[_RawQuestion]) -> list[tuple[int, str, int]]:
    """Repeated question texts and repeated keys within one bank, as (position, "text" or
    "id", position of the first occurrence); the later occurrence is the one reported."""
    found: list[tuple[int, str, int]] = []
    keys: dict[str, int] = {}
    texts: dict[str, int] = {}
    for position, question in enumerate(questions):
        if question.text:
            first = texts.setdefault(_normal(question.text), position)
            if first != position:
                found.append((position, "text", first))
                continue  # spreadsheet keys come from the text: one report is enough
        if question.key:
            first = keys.setdefault(question.key, position)
            if first != position:
                found.append((position, "id", first))
    return found


def _source(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 300 else "…" + text[-299:]


# --- YAML -------------------------------------------------------------------------------

_BANK_FIELDS = ("code", "title", "questions")
_QUESTION_FIELDS = ("id", "type", "text", "options", "answer", "explanation", "tags")


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BankError([f"{path}: not found"]) from None
    except UnicodeDecodeError:
        raise BankError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise BankError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        raise BankError([f"{path}: not valid YAML ({' '.join(str(exc).split())})"]) from None


def _scalar_text(value: object) -> str | None:
    """A YAML scalar as text: strings, and numbers (YAML reads ``1921`` as a number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float):
        return str(value)
    return None


def _split_tags(text: str) -> list[str]:
    return [tag.strip() for tag in _TAG_SEPARATORS.split(text) if tag.strip()]


def _yaml_question(item: dict[Any, Any], report: _Reporter) -> tuple[_RawQuestion, set[str]]:
    """Read one question mapping; type problems are reported here, and the fields they
    concern are returned so that validation does not report them a second time."""
    broken: set[str] = set()

    def bad(name: str, reason: str) -> None:
        broken.add(name.split("[")[0])
        report(name, reason)

    for name in item:
        if name not in _QUESTION_FIELDS:
            report(str(name), f"unknown field (expected {', '.join(_QUESTION_FIELDS)})")

    key = _scalar_text(item.get("id")) or ""
    if not re.fullmatch(KEY_PATTERN, key):
        bad("id", f"{item.get('id')!r} is not an id: letters, digits, '.', '_', '-', 1 to 64")

    def text_field(name: str) -> str:
        value = item.get(name)
        if value is None:
            return ""
        if isinstance(value, str):
            return value.strip()
        bad(name, "must be text")
        return ""

    kind, text, explanation = text_field("type"), text_field("text"), text_field("explanation")

    options: list[str] = []
    raw_options = item.get("options")
    if isinstance(raw_options, list):
        for index, value in enumerate(raw_options):
            option = _scalar_text(value)
            if option is None:
                bad(f"options[{index}]", "must be text")
            options.append(option or "")
    elif raw_options is not None:
        bad("options", "must be a list such as [甲, 乙, 丙, 丁]")

    answer: object = item.get("answer")
    if isinstance(answer, str):
        answer = answer.strip()
    elif isinstance(answer, list) and all(isinstance(letter, str) for letter in answer):
        answer = "".join(answer)
    elif answer is not None and not isinstance(answer, bool):
        bad("answer", "must be letters such as B or ACD, or 对/错 for true/false")

    tags: list[str] = []
    raw_tags = item.get("tags")
    if isinstance(raw_tags, str):
        tags = _split_tags(raw_tags)
    elif isinstance(raw_tags, list):
        for index, value in enumerate(raw_tags):
            if isinstance(value, str):
                tags.append(value.strip())
            else:
                bad(f"tags[{index}]", "must be text")
    elif raw_tags is not None:
        bad("tags", "must be a list of text, such as [党章, 纪律]")

    question = _RawQuestion(
        key=key,
        kind=kind,
        text=text,
        options=options,
        answer=answer,
        explanation=explanation,
        tags=tags,
    )
    return question, broken


class _Reporter:
    """Collects problem lines for one file under a common prefix."""

    def __init__(self, problems: list[str], prefix: str) -> None:
        self.problems, self.prefix = problems, prefix

    def __call__(self, where: str, reason: str) -> None:
        self.problems.append(f"{self.prefix}{where}: {reason}")

    def under(self, where: str) -> _Reporter:
        return _Reporter(self.problems, f"{self.prefix}{where}.")


def load_bank_file(path: Path) -> BankSpec:
    """One YAML bank: ``{code, title, questions: [{id, type, text, options, answer,
    explanation, tags}]}``. Raises :class:`BankError` listing every problem."""
    raw = _read_yaml(path)
    problems: list[str] = []
    report = _Reporter(problems, f"{path}: ")
    if not isinstance(raw, dict):
        raise BankError([f"{path}: (top level): expected a mapping with code, title, questions"])
    for name in raw:
        if name not in _BANK_FIELDS:
            report(str(name), f"unknown field (expected {', '.join(_BANK_FIELDS)})")
    code = raw.get("code")
    if not isinstance(code, str) or not re.fullmatch(CODE_PATTERN, code):
        report("code", f"{code!r} is not a code: lowercase letters, digits and '-', 1 to 64")
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip() or len(title.strip()) > MAX_TITLE:
        report("title", f"must be text of 1 to {MAX_TITLE} characters")
    items = raw.get("questions")
    if not isinstance(items, list) or not items:
        report("questions", "must be a list of at least one question")
        items = []
    elif len(items) > MAX_QUESTIONS:
        report("questions", f"{len(items)} questions, at most {MAX_QUESTIONS} in one bank")
        items = []

    raws: list[_RawQuestion] = []
    positions: list[int] = []
    specs: list[QuestionSpec] = []
    for index, item in enumerate(items):
        where = f"questions[{index}]"
        if not isinstance(item, dict):
            report(where, "expected a mapping with id, type, text, options, answer")
            continue
        question, broken = _yaml_question(item, report.under(where))
        spec, found = _build(question)
        for problem in found:
            if problem.field in broken:
                continue
            suffix = "" if problem.index is None else f"[{problem.index}]"
            report(f"{where}.{problem.field}{suffix}", problem.reason)
        raws.append(question)
        positions.append(index)
        if spec is not None:
            specs.append(spec)
    for position, what, first in _duplicates(raws):
        report(
            f"questions[{positions[position]}].{what}",
            f"same {what} as questions[{positions[first]}]",
        )
    if problems:
        raise BankError(problems)
    assert isinstance(code, str) and isinstance(title, str)
    return BankSpec(code, title.strip(), _source(path), tuple(specs))


# --- quiz definitions -------------------------------------------------------------------


class _QuizModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    code: str = Field(pattern=CODE_PATTERN)
    title: str = Field(min_length=1, max_length=MAX_TITLE)
    bank: str = Field(min_length=1)
    tags: list[str] = []
    question_count: int = Field(ge=1, le=200)
    shuffle_options: bool = True
    time_limit_minutes: int | None = Field(default=None, ge=1, le=24 * 60)
    open_days: int = Field(ge=1, le=366)
    attempts_allowed: int = Field(default=1, ge=1, le=20)
    pass_mark: int = Field(default=60, ge=0, le=100)
    excellent_mark: int = Field(default=90, ge=0, le=100)
    explanations: Literal["each", "end", "never"] = "end"
    use_polls: bool = False


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def load_quiz_definitions(path: Path, banks: Mapping[str, BankSpec]) -> tuple[QuizSpec, ...]:
    """Ready-made quizzes (``quizzes.yaml``): ``{quizzes: [{code, title, bank, tags,
    question_count, ...}]}``, checked against the banks they draw from."""
    return _quiz_definitions(path, banks, banks_complete=True)


def _quiz_definitions(
    path: Path, banks: Mapping[str, BankSpec], *, banks_complete: bool
) -> tuple[QuizSpec, ...]:
    raw = _read_yaml(path)
    problems: list[str] = []
    report = _Reporter(problems, f"{path}: ")
    if raw is None:
        return ()
    if not isinstance(raw, dict) or set(raw) - {"quizzes"}:
        raise BankError([f"{path}: (top level): expected a mapping with one field, quizzes"])
    items = raw.get("quizzes") or []
    if not isinstance(items, list):
        raise BankError([f"{path}: quizzes: must be a list"])
    quizzes: list[QuizSpec] = []
    codes: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"quizzes[{index}]"
        try:
            model = _QuizModel.model_validate(item)
        except ValidationError as exc:
            for error in exc.errors():
                report(f"{where}{_loc(error['loc'])}", error["msg"])
            continue
        first = codes.setdefault(model.code, index)
        if first != index:
            report(f"{where}.code", f"{model.code!r} is also the code of quizzes[{first}]")
        bank = banks.get(model.bank)
        if bank is None:
            if banks_complete:
                known = ", ".join(sorted(banks)) or "none"
                report(f"{where}.bank", f"unknown bank {model.bank!r} (banks: {known})")
            continue
        unused = [tag for tag in model.tags if tag not in bank.tags()]
        if unused:
            report(
                f"{where}.tags",
                f"no question in bank {bank.code} has tag {', '.join(unused)}",
            )
        available = bank.count_with_tags(model.tags)
        if model.question_count > available:
            scope = f" with tags {', '.join(model.tags)}" if model.tags else ""
            report(
                f"{where}.question_count",
                f"{model.question_count} questions wanted, bank {bank.code} has {available}{scope}",
            )
        if model.pass_mark > model.excellent_mark:
            report(
                f"{where}.pass_mark",
                f"the pass mark {model.pass_mark} is above the excellent mark "
                f"{model.excellent_mark}",
            )
        quizzes.append(
            QuizSpec(
                code=model.code,
                title=model.title.strip(),
                bank=model.bank,
                tags=tuple(model.tags),
                question_count=model.question_count,
                shuffle_options=model.shuffle_options,
                time_limit_minutes=model.time_limit_minutes,
                open_days=model.open_days,
                attempts_allowed=model.attempts_allowed,
                pass_mark=model.pass_mark,
                excellent_mark=model.excellent_mark,
                explanations=model.explanations,
                use_polls=model.use_polls,
            )
        )
    if problems:
        raise BankError(problems)
    return tuple(quizzes)


def load_pack_banks(pack_path: Path) -> tuple[tuple[BankSpec, ...], tuple[QuizSpec, ...]]:
    """Every bank under ``<pack>/quizzes`` (each ``*.yaml`` but ``quizzes.yaml``) and the
    quiz definitions in ``quizzes.yaml``. All files are checked and every problem in any
    of them is reported together. A pack without the folder has no banks."""
    folder = pack_path / QUIZZES_FOLDER
    if not folder.is_dir():
        return (), ()
    definitions = folder / QUIZZES_FILE
    files = sorted(
        file
        for file in folder.rglob("*.yaml")
        if file.is_file()
        and file != definitions
        and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    )
    problems: list[str] = []
    banks: dict[str, BankSpec] = {}
    for file in files:
        try:
            bank = load_bank_file(file)
        except BankError as exc:
            problems.extend(exc.problems)
            continue
        other = banks.setdefault(bank.code, bank)
        if other is not bank:
            problems.append(f"{file}: code: {bank.code!r} is also the code of {other.source}")
    quizzes: tuple[QuizSpec, ...] = ()
    if definitions.is_file():
        try:
            quizzes = _quiz_definitions(definitions, banks, banks_complete=not problems)
        except BankError as exc:
            problems.extend(exc.problems)
    if problems:
        raise BankError(problems)
    return tuple(banks.values()), quizzes


# --- spreadsheets -----------------------------------------------------------------------

_HEADERS: dict[str, tuple[str, ...]] = {
    "text": ("题目", "题干", "试题", "问题", "题目内容", "question", "text"),
    "type": ("题型", "类型", "题目类型", "试题类型", "type", "kind"),
    "answer": ("答案", "正确答案", "参考答案", "标准答案", "answer"),
    "explanation": ("解析", "答案解析", "试题解析", "explanation"),
    "tags": ("标签", "分类", "知识点", "tags", "tag"),
}
_HEADER_FIELDS = {alias: name for name, aliases in _HEADERS.items() for alias in aliases}
_OPTION_HEADER = re.compile(r"^(?:选项|option)?([a-f])(?:选项)?$")
_REQUIRED_HEADERS = ("text", "type", "answer")
_HEADER_SEARCH_ROWS = 10


def _column_letter(index: int) -> str:
    """0 → A, 25 → Z, 26 → AA, as a spreadsheet shows its columns."""
    name, number = "", index + 1
    while number:
        number, rest = divmod(number - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def _header_field(header: str) -> str | None:
    """The field a header names (``"text"``, ``"option:2"``, …), or None."""
    word = unicodedata.normalize("NFKC", header).casefold()
    word = re.sub(r"\(.*\)$", "", re.sub(r"[\s_:*\-]+", "", word))
    if word in _HEADER_FIELDS:
        return _HEADER_FIELDS[word]
    match = _OPTION_HEADER.match(word)
    return f"option:{LETTERS.index(match.group(1).upper())}" if match else None


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # Excel's TRUE and FALSE
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value).strip()


def _xlsx_rows(path: Path) -> list[list[str]]:
    import zipfile

    from openpyxl import load_workbook  # type: ignore[import-untyped]

    try:
        with warnings.catch_warnings():
            # Files saved by WPS and newer Excels carry extensions openpyxl warns about.
            warnings.simplefilter("ignore", UserWarning)
            workbook = load_workbook(path, read_only=True, data_only=True)
    except FileNotFoundError:
        raise BankError([f"{path}: not found"]) from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise BankError([f"{path}: not a readable .xlsx workbook ({exc})"]) from None
    try:
        if not workbook.worksheets:
            raise BankError([f"{path}: the workbook has no sheet"])
        sheet = workbook.worksheets[0]
        return [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        workbook.close()


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BankError([f"{path}: not found"]) from None
    except OSError as exc:
        raise BankError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        if data.startswith(codecs.BOM_UTF8):
            text = data[len(codecs.BOM_UTF8) :].decode("utf-8")
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                # Excel in a Chinese locale saves "CSV" in the system code page.
                text = data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise BankError(
            [f"{path}: not UTF-8 or GB18030 text (bad bytes at offset {exc.start})"]
        ) from None
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(",\t;", key=first_line.count)
    try:
        return [
            [cell.strip() for cell in row]
            for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        ]
    except csv.Error as exc:
        raise BankError([f"{path}: not a readable CSV file ({exc})"]) from None


@dataclass
class _Layout:
    """Where the fields are in a sheet: 0-based column indices by field name
    (``text``, ``option:0``…), and the header texts to name them by."""

    row: int
    columns: dict[str, int]
    headers: list[str]

    def cell(self, row: Sequence[str], name: str) -> str:
        index = self.columns.get(name)
        return row[index] if index is not None and index < len(row) else ""

    def option_column(self, index: int | None) -> int | None:
        present = sorted(
            (int(name.split(":")[1]), column)
            for name, column in self.columns.items()
            if name.startswith("option:")
        )
        start = index or 0
        for option, column in present:
            if option >= start:
                return column
        return present[-1][1] if present else None

    def name(self, column: int) -> str:
        header = self.headers[column] if column < len(self.headers) else ""
        return f"column {_column_letter(column)} ({header})"


def _find_layout(path: Path, rows: Sequence[Sequence[str]]) -> _Layout:
    candidates = [(number, row) for number, row in enumerate(rows, 1) if any(row)]
    if not candidates:
        raise BankError([f"{path}: the sheet is empty"])
    # A title line above the header ("2024年党章题库") is common: look a few rows down.
    number, header = next(
        (
            (number, row)
            for number, row in candidates[:_HEADER_SEARCH_ROWS]
            if any(_header_field(cell) == "text" for cell in row)
        ),
        candidates[0],
    )
    problems: list[str] = []
    columns: dict[str, int] = {}
    for column, cell in enumerate(header):
        name = _header_field(cell)
        if name is None:
            continue  # 序号, 分值, 难度 … are not ours
        if name in columns:
            problems.append(
                f"{path}:row {number}:column {_column_letter(column)} ({cell}): "
                f"the same column as column {_column_letter(columns[name])}"
            )
            continue
        columns[name] = column
    for name in _REQUIRED_HEADERS:
        if name not in columns:
            aliases = _HEADERS[name]
            problems.append(
                f"{path}:row {number}: no {aliases[0]} column (the header row needs "
                f"{'/'.join(aliases[:1] + aliases[-2:-1])}); see docs/question-banks.md"
            )
    if problems:
        raise BankError(problems)
    return _Layout(number, columns, list(header))


def read_spreadsheet(path: Path, *, code: str, title: str | None = None) -> BankSpec:
    """A bank from an .xlsx workbook (its first sheet) or a .csv file (UTF-8 with or
    without BOM, or GB18030). The columns are named in a header row, in Chinese or
    English; see ``docs/question-banks.md``. Each row's key is derived from its question
    text, so importing the same sheet again changes nothing."""
    problems: list[str] = []
    if not re.fullmatch(CODE_PATTERN, code):
        problems.append(
            f"{path}: bank code {code!r}: use lowercase letters, digits and '-', 1 to 64"
        )
    name = (title if title is not None else path.stem).strip()
    if not name or len(name) > MAX_TITLE:
        problems.append(f"{path}: title: must be text of 1 to {MAX_TITLE} characters")
    suffix = path.suffix.lower()
    if suffix not in SPREADSHEET_SUFFIXES:
        raise BankError(
            [*problems, f"{path}: cannot read {suffix or 'this'} files; save as .xlsx or .csv"]
        )
    try:
        rows = _csv_rows(path) if suffix == ".csv" else _xlsx_rows(path)
        layout = _find_layout(path, rows)
    except BankError as exc:
        raise BankError([*problems, *exc.problems]) from None

    known = sorted(layout.columns.values())
    raws: list[_RawQuestion] = []
    numbers: list[int] = []
    specs: list[QuestionSpec] = []
    for number, row in enumerate(rows, 1):
        if number <= layout.row or not any(c < len(row) and row[c] for c in known):
            continue  # above or at the header, or blank where it matters
        if len(raws) >= MAX_QUESTIONS:
            problems.append(f"{path}:row {number}: more than {MAX_QUESTIONS} questions")
            break
        raw = _sheet_question(layout, row)
        spec, found = _build(raw)
        for problem in found:
            problems.append(
                f"{path}:row {number}:{_sheet_column(layout, problem)}: {problem.reason}"
            )
        raws.append(raw)
        numbers.append(number)
        if spec is not None:
            specs.append(spec)
    if not raws:
        problems.append(f"{path}: no questions below the header in row {layout.row}")
    for position, _what, first in _duplicates(raws):
        column = layout.name(layout.columns["text"])
        problems.append(
            f"{path}:row {numbers[position]}:{column}: same question as row {numbers[first]}"
        )
    if problems:
        raise BankError(problems)
    return BankSpec(code, name, _source(path), tuple(specs))


def _sheet_question(layout: _Layout, row: Sequence[str]) -> _RawQuestion:
    values = [layout.cell(row, f"option:{index}") for index in range(MAX_OPTIONS)]
    filled = [index for index, value in enumerate(values) if value]
    options = values[: filled[-1] + 1] if filled else []
    text = layout.cell(row, "text")
    return _RawQuestion(
        key=text_key(text) if text else "",
        kind=layout.cell(row, "type"),
        text=text,
        options=options,
        answer=layout.cell(row, "answer"),
        explanation=layout.cell(row, "explanation"),
        tags=_split_tags(layout.cell(row, "tags")),
    )


def _sheet_column(layout: _Layout, problem: _Problem) -> str:
    if problem.field == "options":
        column = layout.option_column(problem.index)
    elif problem.field == "id":
        column = layout.columns.get("text")
    else:
        column = layout.columns.get(problem.field)
    if column is None:  # e.g. options reported for a sheet without option columns
        column = layout.columns["text"]
    return layout.name(column)


# --- storing ----------------------------------------------------------------------------


async def store_bank(
    session: AsyncSession, organisation_id: int, bank: BankSpec, now: datetime
) -> StoreResult:
    """Create or update the organisation's bank ``bank.code`` to match ``bank``.

    For each question key: the same digest leaves it alone; a different digest makes
    the current row inactive and adds version + 1; keys no longer in the bank are made
    inactive (retired). A retired question that comes back counts as added. Rows are
    never deleted or edited beyond ``active``: recorded answers point at them.
    """
    row = await session.scalar(
        select(QuestionBank).where(
            QuestionBank.organisation_id == organisation_id, QuestionBank.code == bank.code
        )
    )
    if row is None:
        row = QuestionBank(
            organisation_id=organisation_id,
            code=bank.code,
            title=bank.title,
            source=bank.source,
            loaded_at=now,
        )
        session.add(row)
        await session.flush()
    else:
        row.title, row.source, row.loaded_at = bank.title, bank.source, now
    versions = await session.scalars(
        select(Question).where(Question.bank_id == row.id).order_by(Question.version)
    )
    latest: dict[str, Question] = {}
    for question in versions:
        older = latest.get(question.key)
        if older is not None and older.active:
            older.active = False  # only the newest version of a key may be active
        latest[question.key] = question

    added = changed = retired = unchanged = 0
    for spec in bank.questions:
        digest = spec.digest()
        current = latest.pop(spec.key, None)
        if current is not None and current.digest == digest:
            if current.active:
                unchanged += 1
            else:
                current.active = True
                added += 1
            continue
        if current is not None and current.active:
            current.active = False
            changed += 1
        else:
            added += 1
        session.add(
            Question(
                bank_id=row.id,
                key=spec.key,
                version=current.version + 1 if current is not None else 1,
                digest=digest,
                kind=spec.kind.value,
                text=spec.text,
                options=list(spec.options),
                answer=list(spec.answer),
                explanation=spec.explanation,
                tags=list(spec.tags),
                active=True,
            )
        )
    for question in latest.values():
        if question.active:
            question.active = False
            retired += 1
    await session.flush()
    return StoreResult(added=added, changed=changed, retired=retired, unchanged=unchanged)
