r"""Data from outside made inert for a terminal: controls and invisible characters shown, not sent.

Content, metadata, ids, routing keys and the error codes and details of dead letters come from
publishers, who may be hostile. Written to a terminal as they are, an ESC starts a sequence the
terminal obeys (clear the screen, set the window title, a hidden OSC 8 link), a carriage return
overwrites the line, and a bidirectional override makes text read other than it is stored. The
one rule, for every command that shows such data:

- C0 controls (U+0000 to U+001F), DEL and C1 controls (U+007F to U+009F), the ESC that starts
  every sequence, line and paragraph separators, lone surrogates, and the invisible formatting
  characters (bidirectional embeddings, overrides and isolates, zero-width spaces, the byte
  order mark, tag characters) are shown as a backslash escape: `\x1b`, `\u202e`,
  `\U000e0041`. Newline and tab are kept where the layout has room for them (a table cell),
  and shown as `\n` and `\t` where it has not (one line per item).
- A backslash is shown as two, so an escape on the screen always stands for a character that
  was escaped, never for the same text typed by a publisher.
- Zero-width joiner and non-joiner are kept: emoji sequences and several scripts need them, and
  they move no cursor.

JSON printed for a terminal takes the same characters as JSON escapes (`\u001b`, `\u202e`),
which parse back to the same data. Text shown through rich is handed to it as `Text`, never as
markup, so `[link=...]` in data is text too.
"""

from __future__ import annotations

import re

# The characters the rule escapes (newline and tab are added per layout). Built from the
# Unicode categories Cc (controls), Cf (format), Zl, Zp and Cs; tests/unit/test_inert.py checks
# the ranges against the standard library's Unicode database.
_RANGES = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 but tab and newline, DEL, C1
    "\u00ad"  # soft hyphen
    "\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"  # Arabic and Syriac format marks
    "\u180e"  # Mongolian vowel separator
    "\u200b\u200e\u200f"  # zero-width space, left-to-right and right-to-left marks
    "\u2028-\u202e"  # line and paragraph separators, embeddings and overrides
    "\u2060-\u2064\u2066-\u206f"  # word joiner, invisible operators, isolates, deprecated
    "\ud800-\udfff"  # lone surrogates (text decoded with surrogateescape)
    "\ufeff\ufff9-\ufffb"  # byte order mark, interlinear annotation
    "\U000110bd\U000110cd"  # Kaithi number signs
    "\U00013430-\U0001343f"  # Egyptian hieroglyph format controls
    "\U0001bca0-\U0001bca3"  # shorthand format controls
    "\U0001d173-\U0001d17a"  # musical symbol format controls
    "\U000e0001\U000e0020-\U000e007f"  # tag characters: invisible text
)
_LINE = re.compile(f"[{_RANGES}\t\n\\\\]")
_BLOCK = re.compile(f"[{_RANGES}\\\\]")
_JSON = re.compile(f"[{_RANGES}]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    if named := _NAMED.get(character):
        return named
    point = ord(character)
    if point <= 0xFF:  # noqa: PLR2004  # one byte: \xNN
        return f"\\x{point:02x}"
    if point <= 0xFFFF:  # noqa: PLR2004  # the basic plane: \uNNNN
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def inert(text: str, *, multiline: bool = False) -> str:
    r"""`text` safe to write to a terminal: the rule above; one line unless `multiline`.

    With `multiline` (a table cell, an indented block) newlines and tabs are kept; otherwise
    they are shown as `\n` and `\t`, so one item stays one line.
    """
    return (_BLOCK if multiline else _LINE).sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    point = ord(match.group())
    if point <= 0xFFFF:  # noqa: PLR2004  # one JSON escape
        return f"\\u{point:04x}"
    # Beyond the basic plane JSON escapes a surrogate pair.
    point -= 0x10000
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def inert_json(text: str) -> str:
    r"""JSON text safe to write to a terminal, and still the same JSON once parsed.

    The characters of the rule can only stand inside JSON strings (the rest of JSON is ASCII),
    where `\uXXXX` means the same character; JSON encoders already escape C0 controls.
    """
    return _JSON.sub(_json_escape, text)
