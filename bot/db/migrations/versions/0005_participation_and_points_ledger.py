"""participation and points ledger

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 13:42:05.905467
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "participation",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("activity_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("branch_id", sa.Integer(), nullable=False),
        sa.Column("activity_at", bot.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closes_at", bot.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("done_at", bot.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("excellent", sa.Boolean(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('quiz', 'study', 'oath', 'meeting')", name=op.f("ck_participation_kind")
        ),
        sa.CheckConstraint(
            "status IN ('due', 'done', 'excused', 'withdrawn')",
            name=op.f("ck_participation_status"),
        ),
        sa.ForeignKeyConstraint(
            ["branch_id"], ["branch.id"], name=op.f("fk_participation_branch_id_branch")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["member.id"], name=op.f("fk_participation_member_id_member")
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisation.id"],
            name=op.f("fk_participation_organisation_id_organisation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_participation")),
        sa.UniqueConstraint("kind", "activity_id", "member_id", name="uq_participation_activity"),
    )
    with op.batch_alter_table("participation", schema=None) as batch_op:
        batch_op.create_index(
            "ix_participation_member_at", ["member_id", "activity_at"], unique=False
        )
        batch_op.create_index(
            "ix_participation_activity",
            ["kind", "activity_id", "branch_id", "status", "passed", "excellent", "score"],
            unique=False,
        )
        batch_op.create_index(
            "ix_participation_open", ["organisation_id", "status", "closes_at"], unique=False
        )

    op.create_table(
        "points_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("branch_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("awarded_at", bot.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["branch_id"], ["branch.id"], name=op.f("fk_points_ledger_branch_id_branch")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["member.id"], name=op.f("fk_points_ledger_member_id_member")
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisation.id"],
            name=op.f("fk_points_ledger_organisation_id_organisation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_points_ledger")),
        sa.UniqueConstraint(
            "member_id", "rule", "source_kind", "source_id", name="uq_points_ledger_award"
        ),
    )
    with op.batch_alter_table("points_ledger", schema=None) as batch_op:
        batch_op.create_index(
            "ix_points_ledger_member_at", ["member_id", "awarded_at"], unique=False
        )
        batch_op.create_index(
            "ix_points_ledger_stats",
            ["organisation_id", "branch_id", "awarded_at", "points"],
            unique=False,
        )

    op.create_table(
        "activity_summary",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("activity_id", sa.Integer(), nullable=False),
        sa.Column("branch_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("activity_at", bot.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Integer(), nullable=False),
        sa.Column("excellent", sa.Integer(), nullable=False),
        sa.Column("score_sum", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["branch_id"], ["branch.id"], name=op.f("fk_activity_summary_branch_id_branch")
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisation.id"],
            name=op.f("fk_activity_summary_organisation_id_organisation"),
        ),
        sa.PrimaryKeyConstraint(
            "kind", "activity_id", "branch_id", name=op.f("pk_activity_summary")
        ),
    )
    with op.batch_alter_table("activity_summary", schema=None) as batch_op:
        batch_op.create_index(
            "ix_activity_summary_org_at", ["organisation_id", "activity_at"], unique=False
        )
    op.create_table(
        "points_summary",
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("branch_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["branch_id"], ["branch.id"], name=op.f("fk_points_summary_branch_id_branch")
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisation.id"],
            name=op.f("fk_points_summary_organisation_id_organisation"),
        ),
        sa.PrimaryKeyConstraint(
            "organisation_id", "branch_id", "day", name=op.f("pk_points_summary")
        ),
    )


def downgrade() -> None:
    op.drop_table("points_summary")
    with op.batch_alter_table("activity_summary", schema=None) as batch_op:
        batch_op.drop_index("ix_activity_summary_org_at")
    op.drop_table("activity_summary")
    with op.batch_alter_table("points_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_points_ledger_stats")
        batch_op.drop_index("ix_points_ledger_member_at")

    op.drop_table("points_ledger")
    with op.batch_alter_table("participation", schema=None) as batch_op:
        batch_op.drop_index("ix_participation_open")
        batch_op.drop_index("ix_participation_activity")
        batch_op.drop_index("ix_participation_member_at")

    op.drop_table("participation")
