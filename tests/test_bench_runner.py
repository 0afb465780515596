"""`python -m bench` block replacement: only the marked block changes, commentary survives."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import block_names, replace_block
from bench.__main__ import BENCHES

DOC = """# Benchmarks

Intro written by hand.

## Scale

Hand-written reading before.

<!-- bench:scale -->
| old | table |
<!-- /bench:scale -->

Reading: hand-written after.

## Other

<!-- bench:other -->
keep me
<!-- /bench:other -->
"""


def test_replaces_only_the_named_block_in_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    path.write_text(replace_block(path.read_text(), "scale", "| new | table |\n| 1 | 2 |"))
    text = path.read_text()
    assert text == DOC.replace("| old | table |\n", "| new | table |\n| 1 | 2 |\n")
    assert "Hand-written reading before." in text and "Reading: hand-written after." in text
    assert "keep me" in text
    assert block_names(text) == ["scale", "other"]


def test_replacement_is_idempotent_and_trims_blank_edges() -> None:
    once = replace_block(DOC, "other", "\n\nnew body\n\n")
    assert replace_block(once, "other", "new body") == once
    assert "<!-- bench:other -->\nnew body\n<!-- /bench:other -->" in once


def test_missing_block_is_appended_with_markers() -> None:
    out = replace_block(DOC, "shipping", "| a |")
    assert out.startswith(DOC.rstrip("\n"))
    assert out.endswith("\n\n<!-- bench:shipping -->\n| a |\n<!-- /bench:shipping -->\n")


@pytest.mark.parametrize("text, message", [
    ("<!-- bench:x -->\nno end\n", "expected one <!-- bench:x --> and one <!-- /bench:x -->, "
                                   "found 1 and 0"),
    ("<!-- /bench:x -->\n<!-- bench:x -->\n", "block x: <!-- /bench:x --> comes before "
                                              "<!-- bench:x -->"),
    ("<!-- bench:x -->\n<!-- /bench:x -->\n<!-- bench:x -->\n<!-- /bench:x -->\n",
     "found 2 and 2"),
])
def test_broken_markers_raise_and_name_the_block(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        replace_block(text, "x", "body")
    assert message in str(e.value)


def test_bad_name_is_refused() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        replace_block(DOC, "a b", "x")


def test_docs_have_one_block_per_benchmark_that_ran() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    names = block_names(docs.read_text())
    assert len(names) == len(set(names))
    assert set(names) <= {b.name for b in BENCHES}


def test_a_marker_mentioned_in_prose_is_not_a_block() -> None:
    prose = "Blocks look like `<!-- bench:scale -->` … `<!-- /bench:scale -->`.\n\n"
    text = prose + DOC
    assert block_names(text) == ["scale", "other"]
    out = replace_block(text, "scale", "| new |")
    assert out.startswith(prose)
    assert "<!-- bench:scale -->\n| new |\n<!-- /bench:scale -->" in out


def test_runner_rewrites_good_blocks_and_fails_on_a_failing_script(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Real scripts in a scratch repo: one prints a table, one exits 3, one is absent."""
    import bench.__main__ as runner

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "good.py").write_text("print('| a |\\n|---|\\n| 1 |')\n")
    (tmp_path / "bench" / "bad.py").write_text("import sys; print('partial'); sys.exit(3)\n")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# B\n\n<!-- bench:good -->\nold\n<!-- /bench:good -->\n\n"
                    "<!-- bench:bad -->\nkept\n<!-- /bench:bad -->\n")
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    monkeypatch.setattr(runner, "BENCHES", (
        runner.Bench("good", ("--x",), ()), runner.Bench("bad", (), ()),
        runner.Bench("absent", (), ())))
    monkeypatch.setattr(runner.Bench, "script",
                        property(lambda b: tmp_path / "bench" / f"{b.name}.py"))
    assert runner.main(["--docs", str(docs), "--only", "good", "absent"]) == 0
    text = docs.read_text()
    assert "python bench/good.py --x" in text and "| a |\n|---|\n| 1 |" in text
    assert "old" not in text
    assert runner.main(["--docs", str(docs)]) == 1
    assert "<!-- bench:bad -->\nkept\n<!-- /bench:bad -->" in docs.read_text()
    assert "partial" not in docs.read_text()
