"""updates received by webhook, recorded so that each is handled once

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 13:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "handled_update",
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("update_id", sa.String(length=64), nullable=False),
        sa.Column("handled_at", bot.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform", "update_id", name=op.f("pk_handled_update")),
    )
    op.create_index(
        op.f("ix_handled_update_handled_at"), "handled_update", ["handled_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_handled_update_handled_at"), table_name="handled_update")
    op.drop_table("handled_update")
