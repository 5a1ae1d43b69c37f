"""A small reader of gettext ``.po`` catalogs (no dependency).

It yields the translated entries of a catalog: header, untranslated and
``#, fuzzy`` entries are skipped; plural entries give their singular pair
(``msgid`` -> ``msgstr[0]``).  Malformed lines raise with file and line.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from textgym.errors import DataError


@dataclass(frozen=True)
class PoEntry:
    msgid: str
    msgstr: str
    msgctxt: str | None
    file: str
    line: int


def _unquote(token: str, where: str) -> str:
    token = token.strip()
    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise DataError(f"{where}: expected a quoted string, got {token[:60]!r}")
    try:
        return ast.literal_eval(token)
    except (ValueError, SyntaxError) as err:
        raise DataError(f"{where}: bad string escape in {token[:60]!r} ({err})") from None


def read_po(path: str | os.PathLike[str]) -> Iterator[PoEntry]:
    """Translated entries of one ``.po`` file, in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: invalid UTF-8 ({err.reason} at byte {err.start})") from None

    fields: dict[str, str] = {}
    current: str | None = None
    fuzzy = pending_fuzzy = False
    start = 0

    def entry() -> PoEntry | None:
        msgid = fields.get("msgid", "")
        msgstr = fields.get("msgstr", fields.get("msgstr[0]", ""))
        if msgid and msgstr and not fuzzy:
            return PoEntry(msgid, msgstr, fields.get("msgctxt"), str(path), start)
        return None

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line:
            continue
        if line.startswith("#"):  # comments, flags and obsolete (#~) entries
            if line.startswith("#,") and "fuzzy" in line:
                pending_fuzzy = True
            continue
        if line.startswith('"'):
            if current is None:
                raise DataError(f"{where}: continuation string outside an entry")
            fields[current] += _unquote(line, where)
            continue
        keyword, _, rest = line.partition(" ")
        if keyword not in ("msgctxt", "msgid", "msgid_plural", "msgstr") and not keyword.startswith("msgstr["):
            raise DataError(f"{where}: unknown keyword {keyword!r}")
        if keyword in ("msgctxt", "msgid") and any(k.startswith("msgstr") for k in fields):
            found = entry()
            if found is not None:
                yield found
            fields = {}
        if not fields:
            start, fuzzy, pending_fuzzy = number, pending_fuzzy, False
        current = keyword
        fields[keyword] = _unquote(rest, where)
    found = entry()
    if found is not None:
        yield found
