"""Benchmark suite helpers: marked blocks in docs/benchmarks.md that `python -m bench` rewrites."""

from __future__ import annotations

import re

BEGIN = "<!-- bench:{name} -->"
END = "<!-- /bench:{name} -->"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def block_names(text: str) -> list[str]:
    """Names of the `<!-- bench:NAME -->` blocks in `text`, in order.

    A marker counts only on a line of its own, so prose that mentions the syntax is not a block.
    """
    return re.findall(r"^<!-- bench:([A-Za-z0-9_.-]+) -->$", text, flags=re.MULTILINE)


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block NAME's content replaced by `body`; everything else kept.

    A missing block is appended at the end (with its markers), so a new benchmark gets a
    place the first time it runs. Hand-written text outside the markers is never touched.

    Raises:
        ValueError: a bad name, a begin marker without its end (or the reverse), or a
            block that appears twice.
    """
    if not _NAME.match(name):
        raise ValueError(f"bench block name {name!r}: letters, digits, _ . - only")
    begin, end = BEGIN.format(name=name), END.format(name=name)
    lines = text.split("\n")
    n_begin, n_end = lines.count(begin), lines.count(end)
    content = "\n" + body.strip("\n") + "\n"
    if n_begin == n_end == 0:
        return text.rstrip("\n") + f"\n\n{begin}{content}{end}\n"
    if n_begin != 1 or n_end != 1:
        raise ValueError(f"block {name}: expected one {begin} and one {end}, found "
                         f"{n_begin} and {n_end}")
    i = _line_start(text, begin) + len(begin)
    j = _line_start(text, end)
    if j < i:
        raise ValueError(f"block {name}: {end} comes before {begin}")
    return text[:i] + content + text[j:]


def _line_start(text: str, marker: str) -> int:
    """Offset of `marker` where it stands on a line of its own (prose mentions are skipped)."""
    return re.search(rf"^{re.escape(marker)}$", text, flags=re.MULTILINE).start()
