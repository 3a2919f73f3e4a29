"""Make attacker-controlled text (process names) inert in every output.

A comm can hold terminal escape sequences, control characters, invalid
UTF-8 (already decoded with backslashreplace) and Rich markup. Front ends
show `printable(comm)`; the TUI additionally never parses it as markup.
"""

from __future__ import annotations

import re

# C0, DEL and C1 control characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """Control characters (C0, DEL, C1) become \\xNN escapes; the rest stays."""
    return _CONTROL.sub(_escape, text)
