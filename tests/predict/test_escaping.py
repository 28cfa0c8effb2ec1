"""escaping.py, by known values: what reaches a terminal, a CSV file or stdout is harmless."""
from __future__ import annotations

import errno
import io

import pytest

from gender_age.predict import escaping


@pytest.mark.parametrize("text,shown", [
    ("plain name.jpg", "plain name.jpg"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("x\x1b[31mred", "x\\x1b[31mred"),                 # ANSI escape: a control character
    ("\x00\x7f\x85", "\\x00\\x7f\\x85"),               # C0, DEL and a C1 control
    ("caf\udcc3\udca9", "caf\\xc3\\xa9"),             # bytes that were not UTF-8 (surrogateescape)
    ("\udc80\udcff", "\\x80\\xff"),                    # the two ends of the surrogateescape range
    ("\ud800x", "\\ud800x"),                           # a lone surrogate outside that range
    ("x\u202egpj.exe", "x\\u202egpj.exe"),             # a bidirectional override
    ("\u2066a\u2069", "\\u2066a\\u2069"),              # isolates
    ("l1\u2028l2\u2029", "l1\\u2028l2\\u2029"),        # line and paragraph separators
    ("été 東京 ok", "été 東京 ok"),                     # printable non-ASCII stays
    ("tab\t\u00e9", "tab\\t\u00e9"),                   # one escape does not escape the rest
    (42, "42"),
])
def test_printable(text, shown):
    assert escaping.printable(text) == shown


@pytest.mark.parametrize("value,cell", [
    ("=1+2", "'=1+2"), ("+cmd", "'+cmd"), ("-cmd", "'-cmd"), ("@SUM(A1)", "'@SUM(A1)"),
    ("-0.5", "-0.5"), ("+3", "+3"), ("-1e3", "-1e3"), ("-inf", "-inf"),  # numbers stay numbers
    ("a=b", "a=b"), ("", ""), ("=\n", "'=\\n"),
])
def test_csv_text(value, cell):
    assert escaping.csv_text(value) == cell


class Stream(io.StringIO):
    def __init__(self, encoding="utf-8", fail=None):
        super().__init__()
        self._encoding, self.fail, self.flushes = encoding, fail, 0

    @property
    def encoding(self):
        return self._encoding

    def write(self, text):
        if self.fail:
            raise self.fail
        text.encode(self._encoding or "ascii")  # as a real stream: UnicodeEncodeError before writing anything
        return super().write(text)

    def flush(self):
        self.flushes += 1


def test_safe_writer_escapes_what_the_encoding_lacks_and_flushes():
    s = Stream("ascii")
    escaping.SafeWriter(s).write("caf\u00e9 \u6771\n")
    assert s.getvalue() == "caf\\xe9 \\u6771\n" and s.flushes == 1
    u = Stream("utf-8")
    escaping.SafeWriter(u).write("caf\u00e9\n")
    assert u.getvalue() == "caf\u00e9\n" and u.flushes == 1


def test_safe_writer_without_an_encoding_writes_ascii():
    s = Stream("ascii")
    s._encoding = None
    with pytest.raises(UnicodeEncodeError):  # the fake stream itself still encodes to ascii...
        s.write("\u00e9")
    escaping.SafeWriter(s).write("\u00e9")   # ...and the writer falls back to ascii escapes
    assert s.getvalue() == "\\xe9"


def test_safe_writer_errors():
    with pytest.raises(escaping.OutputError, match=r"^cannot write the results \(No space left on device\)$"):
        escaping.SafeWriter(Stream(fail=OSError(errno.ENOSPC, "No space left on device"))).write("x")
    with pytest.raises(escaping.OutputError, match=r"^cannot write the results \(disk gone\)$"):
        escaping.SafeWriter(Stream(fail=OSError("disk gone"))).write("x")
    with pytest.raises(BrokenPipeError):  # the caller ends quietly on a closed pipe
        escaping.SafeWriter(Stream(fail=BrokenPipeError(errno.EPIPE, "Broken pipe"))).write("x")


def test_safe_writer_keeps_what_the_stream_encoding_has():
    s = Stream("latin-1")
    escaping.SafeWriter(s).write("caf\u00e9 \u6771")  # é is latin-1, 東 is not
    assert s.getvalue() == "caf\u00e9 \\u6771"


def test_a_surrogate_just_past_the_escape_range():
    assert escaping.printable("\udd00") == "\\udd00"
