"""BuildKit's AST dump format: one s-expression per instruction.

    (from "ubuntu:14.04")
    (copy ["--from=build" "--chmod=755"] "app" "/usr/bin/")
    (onbuild (run "echo" "test"))

Instruction names are lower-cased, flags appear once as a bracketed list, every argument is a Go
`strconv.Quote`d string. `dump_result()` is exactly what BuildKit's parser tests compare with the
`result` files of its corpus.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.frontend.dockerfile.parser import Node, ParseResult

_GO_SPACE_STRIP = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_NAMED_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _go_is_print(ch: str) -> bool:
    # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def go_quote(s: str) -> str:
    """Go's strconv.Quote. Undecodable bytes (kept as surrogate escapes) print as \\xNN.

    >>> print(go_quote('say "hé"\\t\\x00'))
    "say \\"hé\\"\\t\\x00"
    """
    out = ['"']
    for ch in s:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # not encodable in UTF-8; Go would hold U+FFFD
        elif ch in ('"', "\\"):
            out.append("\\" + ch)
        elif _go_is_print(ch):
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def dump(node: Node) -> str:
    """One node (and its children) in BuildKit's Node.Dump() format."""
    text = node.value.lower()
    if node.flags:
        text += " [" + " ".join(go_quote(f) for f in node.flags) + "]"
    for child in node.children:
        text += "(" + dump(child) + ")\n"
    for arg in node.args():
        text += " " + (dump(arg) if arg.children else go_quote(arg.value))
    return text.strip(_GO_SPACE_STRIP)


def dump_result(result: ParseResult) -> str:
    """The whole tree as BuildKit's parser tests print it (with the final newline)."""
    return dump(result.ast) + "\n"
