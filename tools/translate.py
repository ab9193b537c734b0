"""Fill translations into the zh_CN catalog from a Python file holding ``ZH = {msgid: msgstr}``.

For translators working in batches: ``python tools/translate.py batch.py``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from babel.messages.pofile import read_po, write_po

PO = (
    Path(__file__).resolve().parent.parent
    / "bot"
    / "locales"
    / "zh_CN"
    / "LC_MESSAGES"
    / "messages.po"
)


def main(batch: str) -> int:
    translations: dict[str, str] = runpy.run_path(batch)["ZH"]
    with PO.open("rb") as fh:
        catalog = read_po(fh, locale="zh_CN")
    filled = 0
    for message in catalog:
        # Plural messages are keyed by their singular; Chinese has one plural form.
        key = message.id[0] if isinstance(message.id, tuple) else message.id
        if key and key in translations:
            value = translations[key]
            message.string = (value,) if isinstance(message.id, tuple) else value
            filled += 1
    with PO.open("wb") as fh:
        write_po(fh, catalog, width=100, sort_output=False)
    print(f"{filled} translations written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
