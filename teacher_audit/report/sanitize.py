"""Make untrusted strings inert for each output medium.

Every string in a report may come from the attacker: the file name, model-card fields (class
names), pickle global names, error messages quoting any of these. Writers pass them through:

- ``clean``: control characters (ANSI escapes, CR, bidi overrides, NUL...) become visible
  ``\\xNN``/``\\uNNNN`` text; newlines become spaces. Used by every writer (terminal, SARIF, HTML).
- ``md``: ``clean`` + every syntax-bearing punctuation character as a numeric character reference, so
  that nothing can form Markdown syntax, an HTML tag, a table cell break, an autolink or an
  ``@mention`` in a GitHub pull-request comment; the rendered text still reads the same.
- HTML escaping itself is jinja2 autoescape (``html`` writer).
"""

from __future__ import annotations

from typing import Any

#: characters that can start Markdown/HTML syntax, table cells, autolinks, math, mentions or emoji.
_PUNCT = set("\\`*_{}[]()#+-.!|<>&@:~$^=")


def clean(value: Any, limit: int | None = 2000) -> str:
    """One line of printable text; non-printable characters shown as escapes; optionally truncated."""
    text = "" if value is None else str(value)
    out: list[str] = []
    for ch in text:
        if ch in "\n\r\t":
            out.append(" ")
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    s = "".join(out)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def md(value: Any, limit: int | None = 500) -> str:
    """Inert Markdown inline text (GitHub-flavoured): punctuation as ``&#NN;`` references."""
    return "".join(f"&#{ord(ch)};" if ch in _PUNCT else ch for ch in clean(value, limit))
