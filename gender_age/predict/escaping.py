"""Output that is safe to show: text for a terminal (``printable``: control characters, bytes
that are not UTF-8 and bidirectional overrides as backslash escapes, so a newline in a file or
class name cannot forge a result line), CSV cells that a spreadsheet will not run as a formula
(``csv_text``), and a stdout writer that never fails on an encoding (``SafeWriter``).
"""
from __future__ import annotations

import unicodedata

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
FORMULA_START = ("=", "+", "-", "@")  # a spreadsheet runs a cell starting with these


class OutputError(Exception):
    """An output (stdout, an annotated file) cannot be written; the message says which and why."""


def printable(text) -> str:
    """``text`` safe on one line of output: newlines, tabs and other control characters as
    backslash escapes (\\n, \\x1b), bytes of a file name that are not UTF-8 (surrogateescape)
    as \\xNN, bidirectional overrides as \\uNNNN."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch in "\n\r\t":
            out.append(repr(ch)[1:-1])
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def csv_text(value: str) -> str:
    """A CSV text cell (file name, label): ``printable``, and quoted with a leading ' when a
    spreadsheet would take it for a formula (numbers such as -0.5 stay as they are)."""
    value = printable(value)
    if value.startswith(FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


class SafeWriter:
    """Writes text to ``stream`` (stdout) and flushes it, so records appear as units finish.
    Characters the stream's encoding lacks become backslash escapes; any other OSError
    (a full disk) is an OutputError."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:  # nothing was written: the text is encoded first
                enc = getattr(self.stream, "encoding", None) or "ascii"
                self.stream.write(text.encode(enc, "backslashreplace").decode(enc))
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write the results ({e.strerror or e})") from None
