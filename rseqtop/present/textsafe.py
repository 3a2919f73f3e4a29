"""Make attacker-controlled text (process names) inert in every output.

A comm can hold terminal escape sequences, control characters, invalid
UTF-8 (already decoded with backslashreplace) and Rich markup. Front ends
show `printable(comm)`; the TUI additionally never parses it as markup.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """Control characters (C0, DEL, C1) become \\xNN escapes; the rest stays."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)
