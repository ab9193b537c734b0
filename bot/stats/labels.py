"""Names of activity kinds, shared by /me, the stats commands, charts and the export."""

from __future__ import annotations

from bot.db.models import ActivityKind
from bot.i18n import N_, Translator

KIND_LABELS = {
    ActivityKind.QUIZ.value: N_("Quiz"),
    ActivityKind.STUDY.value: N_("Study"),
    ActivityKind.OATH.value: N_("Oath renewal"),
    ActivityKind.MEETING.value: N_("Meetings"),
}


def kind_label(t: Translator, kind: str) -> str:
    return t(KIND_LABELS.get(kind, kind))
