"""The table blocks of a markdown file (README.md): `<!-- table: <study> <label> -->` ...
`<!-- /table -->`, whose bodies aggregate.py refreshes from the tables it has just rebuilt."""
from __future__ import annotations

import re
from pathlib import Path

from ..atomic import atomic_file
from ..errors import UserError

BLOCK = re.compile(r"(<!-- table: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


MARKER = re.compile(r"<!-- table: [^>]+? -->|<!-- /table -->")


def read_readme(path: Path) -> str:
    """The file's text, if its table markers pair up (each opening one closed before the next
    opens): a missing closing marker would make a block swallow hand-written text."""
    if not path.is_file():
        raise UserError(f"readme={path}: no such file")
    text = path.read_text()
    open_at = None
    for marker in MARKER.finditer(text):
        line = text.count("\n", 0, marker.start()) + 1
        if marker[0].startswith("<!-- table:") and open_at is not None:
            raise UserError(f"readme={path}: the table block opened on line {open_at} has no "
                            f"<!-- /table --> before the next block (line {line}); add it "
                            f"(the file is left as it is)")
        if marker[0] == "<!-- /table -->" and open_at is None:
            raise UserError(f"readme={path}: <!-- /table --> on line {line} closes no block; "
                            f"remove it (the file is left as it is)")
        open_at = line if open_at is None else None
    if open_at is not None:
        raise UserError(f"readme={path}: the table block opened on line {open_at} is never "
                        f"closed with <!-- /table -->; add it (the file is left as it is)")
    return text


def refresh_readme(path: Path, blocks: dict[str, str]) -> tuple[list[str], list[str]]:
    """Replaces the body of each `<!-- table: <study> <label> -->` ... `<!-- /table -->` block
    of a markdown file with that table section as just rebuilt, so the numbers a README shows
    are the records' own. Returns (names refreshed, names with no such table: left as they
    are)."""
    text = read_readme(path)
    done, unknown = [], []

    def body(match: re.Match) -> str:
        name = match["name"].strip()
        if name not in blocks:
            unknown.append(name)
            return match[0]
        done.append(name)
        note = "<!-- rebuilt by python -m childtune.aggregate from results/; do not edit -->"
        return f"{match[1]}{note}\n\n{blocks[name]}\n\n{match[4]}"

    new = BLOCK.sub(body, text)
    if new != text:
        with atomic_file(path, "w") as f:
            f.write(new)
    return done, unknown
