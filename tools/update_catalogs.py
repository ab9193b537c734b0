"""Extract messages from the code and merge them into the catalogs.

Run with ``make messages``. New messages appear in the .po files with an empty
translation; the catalog test fails until someone translates them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "bot" / "locales"
KEYWORDS = {"t": None, "N_": None, "theirs": None, "n": (1, 2)}


def extract() -> Catalog:
    template = Catalog()
    for _file, _line, message, _comments, _context in extract_from_dir(
        ROOT / "bot", keywords=KEYWORDS
    ):
        template.add(message)
    return template


def main() -> int:
    template = extract()
    for lang in ("zh_CN",):
        path = LOCALES / lang / "LC_MESSAGES" / "messages.po"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("rb") as fh:
                catalog = read_po(fh, locale=lang)
        else:
            catalog = Catalog(locale=lang)
        catalog.update(template, no_fuzzy_matching=True)
        with path.open("wb") as fh:
            write_po(
                fh, catalog, omit_header=False, width=100, ignore_obsolete=True, sort_output=False
            )
        missing = [m.id for m in catalog if m.id and not m.string]
        print(f"{path.relative_to(ROOT)}: {len(catalog)} messages, {len(missing)} untranslated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
