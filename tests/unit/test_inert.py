"""The one rule for data shown on a terminal: controls and invisible characters shown, not sent."""

from __future__ import annotations

import json
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.inert import inert, inert_json

# What the rule escapes, by Unicode category; the joiners are kept (emoji, several scripts).
ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
KEPT = frozenset({"\u200c", "\u200d"})


def escaped(character: str) -> bool:
    """Whether the rule must escape `character` (newline and tab aside)."""
    return unicodedata.category(character) in ESCAPED_CATEGORIES and character not in KEPT


def dangerous_in(text: str, *, multiline: bool) -> list[str]:
    """The characters of `text` a terminal must never receive from data."""
    allowed = {"\n", "\t"} if multiline else set()
    return [c for c in text if escaped(c) and c not in allowed]


class TestTheCharacters:
    """Every control, format and separator character is escaped; the rest is left alone."""

    def test_every_code_point_of_the_escaped_categories(self) -> None:
        """All of Cc, Cf, Zl, Zp and Cs (but the joiners) come out escaped, nothing else does.

        Ranges the rule lists beyond this Python's Unicode database must be unassigned here
        (format controls added by a later Unicode version).
        """
        leaked, extra = [], []
        for point in range(sys.maxunicode + 1):
            character = chr(point)
            if character in "\n\t\\":
                continue
            changed = inert(character) != character
            if escaped(character) and not changed:
                leaked.append(hex(point))
            if changed and not escaped(character) and unicodedata.category(character) != "Cn":
                extra.append(hex(point))
        assert leaked == []
        assert extra == []

    @pytest.mark.parametrize(
        ("data", "shown"),
        [
            ("\x1b[2J", "\\x1b[2J"),  # clear the screen
            ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # the window title
            ("\x1b]8;;http://evil.example/\x1b\\x\x1b]8;;\x1b\\", None),  # a hidden link
            ("safe\rEVIL", "safe\\x0dEVIL"),  # a carriage return overwriting the line
            ("\x9b2J", "\\x9b2J"),  # C1 CSI
            ("\x7f\x08", "\\x7f\\x08"),  # DEL, backspace
            ("\u202egnp.exe", "\\u202egnp.exe"),  # a right-to-left override
            ("a\u2066b\u2069", "a\\u2066b\\u2069"),  # isolates
            ("x\U000e0049\U000e0047", "x\\U000e0049\\U000e0047"),  # tag characters
            ("\ufeffbom", "\\ufeffbom"),
            ("one\u2028two", "one\\u2028two"),
            ("C:\\x1b", "C:\\\\x1b"),  # a backslash typed by a publisher: shown as two
            ("a\nb\tc", "a\\nb\\tc"),
            ("👩\u200d💻 café [link=x]y[/link]", "👩\u200d💻 café [link=x]y[/link]"),
        ],
    )
    def test_examples(self, data: str, shown: str | None) -> None:
        """Escapes as documented; ordinary text, emoji with joiners and brackets unchanged."""
        result = inert(data)
        assert dangerous_in(result, multiline=False) == []
        if shown is not None:
            assert result == shown

    def test_a_table_cell_keeps_newlines_and_tabs(self) -> None:
        """With room for several lines, newline and tab stay; a carriage return does not."""
        assert inert("a\nb\tc\r", multiline=True) == "a\nb\tc\\x0d"


class TestAnyText:
    """Whatever a publisher sends, the result holds no character a terminal would obey."""

    @given(st.text())
    def test_one_line(self, text: str) -> None:
        """One-line output: nothing escaped remains, newline and tab included."""
        shown = inert(text)
        assert dangerous_in(shown, multiline=False) == []
        assert "\n" not in shown
        assert "\t" not in shown

    @given(st.text())
    def test_multiline(self, text: str) -> None:
        """Block output: only newlines and tabs of the escaped categories remain."""
        assert dangerous_in(inert(text, multiline=True), multiline=True) == []

    @given(st.text())
    def test_escapes_are_unambiguous(self, text: str) -> None:
        """Different texts never look the same: the escaping can be undone."""
        # Python's unicode_escape reads \x, \u, \U, \n, \t and \\ as the rule writes them.
        shown = inert(text)
        assert shown.encode("raw_unicode_escape").decode("unicode_escape") == text

    @given(st.recursive(st.none() | st.booleans() | st.text(), st.lists))
    def test_json_stays_the_same_json(self, value: object) -> None:
        """JSON made inert parses back to the same value and holds no dangerous character."""
        for text in (json.dumps(value, ensure_ascii=False), json.dumps(value, indent=2)):
            safe = inert_json(text)
            assert json.loads(safe) == value
            assert dangerous_in(safe, multiline=True) == []
