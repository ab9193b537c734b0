"""The schema. Alembic migrations under ``migrations/`` are the only way it is created."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bot.db.types import UTCDateTime

# Stable constraint names make migrations reviewable and portable between databases.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Role(enum.StrEnum):
    MEMBER = "member"
    SECRETARY = "secretary"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.MEMBER: 0, Role.SECRETARY: 1, Role.ADMIN: 2}
ROLE_VALUES = ", ".join(f"'{r.value}'" for r in Role)


class Organisation(Base):
    __tablename__ = "organisation"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")
    created_at: Mapped[datetime]


class Branch(Base):
    __tablename__ = "branch"
    __table_args__ = (UniqueConstraint("organisation_id", "code", name="uq_branch_org_code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(default=True)


class Member(Base):
    __tablename__ = "member"
    __table_args__ = (
        CheckConstraint(f"role IN ({ROLE_VALUES})", name="role"),
        Index("ix_member_branch_active", "branch_id", "active"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16), default=Role.MEMBER.value)
    language: Mapped[str | None] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(default=True)
    joined_at: Mapped[datetime]
    party_joined_on: Mapped[date | None]

    branch: Mapped[Branch] = relationship(lazy="joined")

    @property
    def role_enum(self) -> Role:
        return Role(self.role)


class MemberIdentity(Base):
    """One member may be reachable on several messengers; each identity belongs to one."""

    __tablename__ = "member_identity"
    __table_args__ = (
        UniqueConstraint("platform", "platform_user_id", name="uq_member_identity_platform_user"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    chat_id: Mapped[str] = mapped_column(String(64))
    username: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]

    member: Mapped[Member] = relationship(lazy="joined")


class Invite(Base):
    __tablename__ = "invite"
    __table_args__ = (CheckConstraint(f"role IN ({ROLE_VALUES})", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"))
    role: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    max_uses: Mapped[int]
    uses: Mapped[int] = mapped_column(default=0)
    revoked_at: Mapped[datetime | None]

    branch: Mapped[Branch] = relationship(lazy="joined")


class JoinFailure(Base):
    """A wrong invite code, kept to throttle guessing."""

    __tablename__ = "join_failure"
    __table_args__ = (Index("ix_join_failure_who_at", "platform", "platform_user_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]


class JoinLock(Base):
    __tablename__ = "join_lock"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform_user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    locked_until: Mapped[datetime]


class Conversation(Base):
    """Where a person is in a multi-step exchange (joining, composing...).

    Keyed by messenger identity, not member, because people who are joining are not
    members yet. Lives in the database so a restart or an adapter swap loses nothing.
    """

    __tablename__ = "conversation"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform_user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow: Mapped[str] = mapped_column(String(32))
    step: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime]


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (CheckConstraint("outcome IN ('ok', 'refused')", name="outcome"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor_member_id: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16), default="ok")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    note: Mapped[str | None] = mapped_column(Text)


# --- notices ----------------------------------------------------------------------


class NoticeKind(enum.StrEnum):
    MEETING = "meeting"
    THEME_DAY = "theme_day"
    CONGRESS = "congress"
    STUDY = "study"
    OTHER = "other"


class Notice(Base):
    __tablename__ = "notice"
    __table_args__ = (
        CheckConstraint(
            "kind IN ({})".format(", ".join(f"'{k.value}'" for k in NoticeKind)), name="kind"
        ),
        CheckConstraint("status IN ('sent', 'cancelled')", name="status"),
        Index("ix_notice_org_starts", "organisation_id", "starts_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    starts_at: Mapped[datetime]
    place: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text, default="")
    rsvp: Mapped[bool] = mapped_column(default=True)
    status: Mapped[str] = mapped_column(String(16), default="sent")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    checkin_code: Mapped[str | None] = mapped_column(String(8))
    checkin_until: Mapped[datetime | None]

    branches: Mapped[list[Branch]] = relationship(secondary="notice_branch", lazy="selectin")


class NoticeBranch(Base):
    __tablename__ = "notice_branch"

    notice_id: Mapped[int] = mapped_column(ForeignKey("notice.id"), primary_key=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"), primary_key=True)


class Rsvp(Base):
    """One member's answer to a notice, their leave request, and their attendance."""

    __tablename__ = "rsvp"
    __table_args__ = (
        UniqueConstraint("notice_id", "member_id", name="uq_rsvp_notice_member"),
        CheckConstraint("answer IS NULL OR answer IN ('attend', 'leave')", name="answer"),
        CheckConstraint(
            "leave_status IS NULL OR leave_status IN ('pending', 'approved', 'refused')",
            name="leave_status",
        ),
        CheckConstraint(
            "checkin_method IS NULL OR checkin_method IN ('code', 'secretary', 'offline')",
            name="checkin_method",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notice.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"), index=True)
    answer: Mapped[str | None] = mapped_column(String(16))
    answered_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    leave_status: Mapped[str | None] = mapped_column(String(16))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    decided_at: Mapped[datetime | None]
    present: Mapped[bool] = mapped_column(default=False)
    checked_in_at: Mapped[datetime | None]
    checkin_method: Mapped[str | None] = mapped_column(String(16))
    checked_in_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))


# --- durable broadcasts -----------------------------------------------------------


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting to be sent (possibly after next_attempt_at)
    SENDING = "sending"  # claimed by a sender; in flight until lease_until
    SENT = "sent"
    FAILED = "failed"  # with a reason in ``error``
    UNKNOWN = "unknown"  # the sender died mid-send: maybe delivered, maybe not


class Broadcast(Base):
    """One message to many people. Its recipients are materialised as deliveries
    before the first send, so nobody can be skipped by a crash."""

    __tablename__ = "broadcast"

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    kind: Mapped[str] = mapped_column(String(32))
    # Unique per occurrence ("notice:5:remind:24h"), so a repeated tick creates nothing.
    key: Mapped[str | None] = mapped_column(String(200), unique=True)
    subject_id: Mapped[int | None] = mapped_column(index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    created_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    completed_at: Mapped[datetime | None]


class Delivery(Base):
    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "member_id", name="uq_delivery_broadcast_member"),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s.value}'" for s in DeliveryStatus)),
            name="status",
        ),
        Index("ix_delivery_due", "status", "next_attempt_at"),
        Index("ix_delivery_broadcast_status", "broadcast_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcast.id"))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("member.id"), index=True)
    # Resolved when the broadcast is created: who gets it is decided then, not later.
    chat_id: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(300))


class SendBudgetRow(Base):
    """One bot's send rate, shared by every process sending for it (PostgreSQL only;
    see bot/send_budget.py). Times are seconds since the epoch on the database's clock,
    the one clock every process sees."""

    __tablename__ = "send_budget"

    bot: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The first send slot nobody has taken yet.
    next_slot: Mapped[float] = mapped_column(Float, default=0.0)
    # A 429's retry_after, as seen by any process: nobody sends before this.
    paused_until: Mapped[float] = mapped_column(Float, default=0.0)


# --- scheduled work ---------------------------------------------------------------


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"  # came due too long ago (the bot was down past the grace window)
    FAILED = "failed"


class DueJob(Base):
    """ "Do this at T": features write rows, one periodic tick claims and runs them."""

    __tablename__ = "due_job"
    __table_args__ = (
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus)),
            name="status",
        ),
        Index("ix_due_job_due", "status", "run_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique per occurrence, so scheduling the same thing twice is harmless.
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    run_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(64))
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(300))


# --- quizzes ----------------------------------------------------------------------


class QuestionKind(enum.StrEnum):
    SINGLE = "single"
    MULTIPLE = "multiple"
    TRUE_FALSE = "truefalse"


class QuestionBank(Base):
    __tablename__ = "question_bank"
    __table_args__ = (
        UniqueConstraint("organisation_id", "code", name="uq_question_bank_org_code"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    code: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(300))
    loaded_at: Mapped[datetime]


class Question(Base):
    """One version of a question. Rows are never edited: a changed question becomes a
    new row (and the old one inactive), so recorded answers keep meaning what they
    meant and item analysis stays honest."""

    __tablename__ = "question"
    __table_args__ = (
        UniqueConstraint("bank_id", "key", "version", name="uq_question_bank_key_version"),
        CheckConstraint(
            "kind IN ({})".format(", ".join(f"'{k.value}'" for k in QuestionKind)), name="kind"
        ),
        Index("ix_question_bank_active", "bank_id", "active"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("question_bank.id"))
    key: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(default=1)
    # Hash of the content, to tell an unchanged question from an edited one on reload.
    digest: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    options: Mapped[list[str]] = mapped_column(JSON)
    # Indices into ``options`` of the correct choices (one for single and true/false).
    answer: Mapped[list[int]] = mapped_column(JSON)
    explanation: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(default=True)


class Quiz(Base):
    __tablename__ = "quiz"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        CheckConstraint("explanations IN ('each', 'end', 'never')", name="explanations"),
        Index("ix_quiz_org_opens", "organisation_id", "opens_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    title: Mapped[str] = mapped_column(String(200))
    bank_id: Mapped[int] = mapped_column(ForeignKey("question_bank.id"))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    question_count: Mapped[int]
    shuffle_options: Mapped[bool] = mapped_column(default=True)
    time_limit_seconds: Mapped[int | None]
    opens_at: Mapped[datetime]
    closes_at: Mapped[datetime]
    attempts_allowed: Mapped[int] = mapped_column(default=1)
    pass_mark: Mapped[int] = mapped_column(default=60)
    excellent_mark: Mapped[int] = mapped_column(default=90)
    explanations: Mapped[str] = mapped_column(String(8), default="end")
    use_polls: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(8), default="open")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    created_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]

    branches: Mapped[list[Branch]] = relationship(secondary="quiz_branch", lazy="selectin")


class QuizBranch(Base):
    __tablename__ = "quiz_branch"

    quiz_id: Mapped[int] = mapped_column(ForeignKey("quiz.id"), primary_key=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"), primary_key=True)


class QuizExemption(Base):
    """Approved leave from a quiz: the member leaves the 参考率 denominator."""

    __tablename__ = "quiz_exemption"

    quiz_id: Mapped[int] = mapped_column(ForeignKey("quiz.id"), primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    decided_at: Mapped[datetime]


class QuizAttempt(Base):
    __tablename__ = "quiz_attempt"
    __table_args__ = (
        UniqueConstraint("quiz_id", "member_id", "number", name="uq_quiz_attempt_number"),
        CheckConstraint("status IN ('in_progress', 'finished', 'timed_out')", name="status"),
        CheckConstraint("source IN ('chat', 'offline')", name="source"),
        Index("ix_quiz_attempt_quiz_member", "quiz_id", "member_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    quiz_id: Mapped[int] = mapped_column(ForeignKey("quiz.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    source: Mapped[str] = mapped_column(String(8), default="chat")
    started_at: Mapped[datetime]
    deadline_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The position of the question being asked (0-based); questions before it are done.
    position: Mapped[int] = mapped_column(default=0)
    total: Mapped[int]
    correct: Mapped[int] = mapped_column(default=0)
    score: Mapped[float | None]
    recorded_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))


class QuizAnswer(Base):
    """One question of one attempt: which question, in what option order, and what the
    member chose (as indices into the question's own options)."""

    __tablename__ = "quiz_answer"
    __table_args__ = (Index("ix_quiz_answer_question", "question_id"),)

    attempt_id: Mapped[int] = mapped_column(ForeignKey("quiz_attempt.id"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    question_id: Mapped[int] = mapped_column(ForeignKey("question.id"))
    # option_order[i] is the question option shown as choice i.
    option_order: Mapped[list[int]] = mapped_column(JSON)
    # Choices toggled so far (multiple choice), before submitting.
    pending: Mapped[list[int]] = mapped_column(JSON, default=list)
    selected: Mapped[list[int] | None] = mapped_column(JSON)
    correct: Mapped[bool | None]
    answered_at: Mapped[datetime | None]
    # The chat message showing this question, so it can be edited as it is answered;
    # for native polls, the poll's id.
    message_id: Mapped[str | None] = mapped_column(String(64))
    poll_id: Mapped[str | None] = mapped_column(String(64), index=True)


# --- study materials ----------------------------------------------------------------


class Material(Base):
    """One version of a study material. A changed file becomes a new version; receipts
    of the old one stay with it."""

    __tablename__ = "material"
    __table_args__ = (
        UniqueConstraint("organisation_id", "key", "version", name="uq_material_key_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    # The file's stable name in the content pack (e.g. "2026-11-constitution").
    key: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(default=1)
    digest: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text)
    points: Mapped[int] = mapped_column(default=0)
    # Branch codes it is for; empty means every branch.
    audience: Mapped[list[str]] = mapped_column(JSON, default=list)
    attachment: Mapped[str | None] = mapped_column(String(300))
    publish_at: Mapped[datetime | None]
    due_days: Mapped[int | None]
    active: Mapped[bool] = mapped_column(default=True)
    loaded_at: Mapped[datetime]


class MaterialPublication(Base):
    """A material sent to branches (on its schedule, or by a secretary with /publish)."""

    __tablename__ = "material_publication"

    id: Mapped[int] = mapped_column(primary_key=True)
    material_id: Mapped[int] = mapped_column(ForeignKey("material.id"), index=True)
    branch_ids: Mapped[list[int]] = mapped_column(JSON)
    published_at: Mapped[datetime]
    published_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    due_at: Mapped[datetime | None]


class MaterialReceipt(Base):
    __tablename__ = "material_receipt"
    __table_args__ = (
        UniqueConstraint("material_id", "member_id", name="uq_material_receipt_member"),
        CheckConstraint("method IN ('chat', 'offline')", name="method"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    material_id: Mapped[int] = mapped_column(ForeignKey("material.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"), index=True)
    read_at: Mapped[datetime]
    method: Mapped[str] = mapped_column(String(8), default="chat")
    recorded_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))


# --- oath renewal ------------------------------------------------------------------


class OathText(Base):
    __tablename__ = "oath_text"
    __table_args__ = (
        UniqueConstraint("organisation_id", "key", "version", name="uq_oath_text_key_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    key: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(default=1)
    digest: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)


class OathCampaign(Base):
    __tablename__ = "oath_campaign"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        CheckConstraint("occasion IN ('calendar', 'adhoc', 'birthday')", name="occasion"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    # Unique per occurrence ("qingming:2026", "birthday:12:2026"): a calendar rule
    # evaluated twice, or after a restart, opens nothing new.
    key: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    occasion: Mapped[str] = mapped_column(String(16))
    oath_text_id: Mapped[int] = mapped_column(ForeignKey("oath_text.id"))
    branch_ids: Mapped[list[int]] = mapped_column(JSON)
    opens_at: Mapped[datetime]
    closes_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(8), default="open")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    created_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]


class OathRenewal(Base):
    """A member re-took the oath in a campaign, with an optional personal pledge."""

    __tablename__ = "oath_renewal"
    __table_args__ = (
        UniqueConstraint("campaign_id", "member_id", name="uq_oath_renewal_member"),
        CheckConstraint("method IN ('chat', 'offline')", name="method"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("oath_campaign.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"), index=True)
    renewed_at: Mapped[datetime]
    method: Mapped[str] = mapped_column(String(8), default="chat")
    recorded_by: Mapped[int | None] = mapped_column(ForeignKey("member.id"))
    pledge: Mapped[str | None] = mapped_column(Text)
    pledge_updated_at: Mapped[datetime | None]


# --- participation and points --------------------------------------------------------


class ActivityKind(enum.StrEnum):
    QUIZ = "quiz"
    STUDY = "study"
    OATH = "oath"
    MEETING = "meeting"


class ParticipationStatus(enum.StrEnum):
    DUE = "due"  # expected and not done (yet): after ``closes_at`` it is a miss
    DONE = "done"
    EXCUSED = "excused"  # approved leave or exemption: out of the denominator
    WITHDRAWN = "withdrawn"  # deactivated before taking part, or activity cancelled


class Participation(Base):
    """One member expected at one activity, and whether they took part.

    A row is written for every member an activity reaches when it reaches them (a quiz
    opened, a material published, an oath campaign opened, a notice sent), with the
    branch they were in then; taking part marks it done. Stats are then one GROUP BY
    over this table: a member who moved branch counts where they were at the time, a
    deactivated member stops counting from then on, and a figure never depends on who
    happens to be a member on the day it is asked for.
    """

    __tablename__ = "participation"
    __table_args__ = (
        UniqueConstraint("kind", "activity_id", "member_id", name="uq_participation_activity"),
        CheckConstraint(
            "kind IN ({})".format(", ".join(f"'{k.value}'" for k in ActivityKind)), name="kind"
        ),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s.value}'" for s in ParticipationStatus)),
            name="status",
        ),
        # Covers the recount of one activity's rows in one branch (ActivitySummary).
        Index(
            "ix_participation_activity",
            "kind",
            "activity_id",
            "branch_id",
            "status",
            "passed",
            "excellent",
            "score",
        ),
        # /missing and /me: what is still open.
        Index("ix_participation_open", "organisation_id", "status", "closes_at"),
        Index("ix_participation_member_at", "member_id", "activity_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    kind: Mapped[str] = mapped_column(String(16))
    activity_id: Mapped[int]
    # Denormalised so a member's record and the export need no join per activity kind.
    title: Mapped[str] = mapped_column(String(200))
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"))
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"))
    # When the activity happened (quiz opened, material published, meeting started):
    # the period a row belongs to.
    activity_at: Mapped[datetime]
    # After this a row still ``due`` is a miss; open activities have it in the future.
    closes_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default=ParticipationStatus.DUE.value)
    done_at: Mapped[datetime | None]
    score: Mapped[float | None]
    passed: Mapped[bool | None]
    excellent: Mapped[bool | None]


class PointsAward(Base):
    """One award in the points ledger, naming the rule and the activity it was for.

    Awards are written once and never recomputed: a rule changed later changes future
    awards only, so last year's ranking stays what it was and can always be explained.
    """

    __tablename__ = "points_ledger"
    __table_args__ = (
        UniqueConstraint(
            "member_id", "rule", "source_kind", "source_id", name="uq_points_ledger_award"
        ),
        # Covering, branch first, for the same reason as ix_participation_stats.
        Index("ix_points_ledger_stats", "organisation_id", "branch_id", "awarded_at", "points"),
        Index("ix_points_ledger_member_at", "member_id", "awarded_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("member.id"))
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"))
    rule: Mapped[str] = mapped_column(String(64))
    points: Mapped[int]
    source_kind: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[int]
    awarded_at: Mapped[datetime]


class ActivitySummary(Base):
    """One activity's participation counted per branch, kept current by
    ``bot.participation`` in the same transaction as every change to its rows.

    Stats read these (a few thousand rows a year) instead of grouping a year of
    participation rows, which takes seconds at 1.5 million rows however it is indexed.
    """

    __tablename__ = "activity_summary"
    __table_args__ = (Index("ix_activity_summary_org_at", "organisation_id", "activity_at"),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    activity_id: Mapped[int] = mapped_column(primary_key=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"))
    activity_at: Mapped[datetime]
    expected: Mapped[int] = mapped_column(default=0)  # due or done
    done: Mapped[int] = mapped_column(default=0)
    passed: Mapped[int] = mapped_column(default=0)
    excellent: Mapped[int] = mapped_column(default=0)
    score_sum: Mapped[float] = mapped_column(default=0.0)


class PointsSummary(Base):
    """Points awarded per branch and day (in the organisation's time zone), kept by
    ``bot.participation`` with every award and revocation."""

    __tablename__ = "points_summary"

    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"), primary_key=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    points: Mapped[int] = mapped_column(default=0)


# --- updates received by webhook ---------------------------------------------------


class HandledUpdate(Base):
    """An update that arrived by webhook and was handled, written in the same transaction
    as the handler's changes: a redelivery (Telegram retries a webhook that got no 2xx
    answer, or two workers receive it) finds the row and changes nothing. Pruned after a
    few days, by when Telegram has long stopped retrying (see bot.handled_updates)."""

    __tablename__ = "handled_update"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    update_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    handled_at: Mapped[datetime] = mapped_column(index=True)
