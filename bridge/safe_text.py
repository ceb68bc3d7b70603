"""Names from outside (publishers' display names, file names) as a terminal or a log may show
them: control, format (bidi overrides) and other invisible characters escaped, length capped.
Events keep the exact name; only what is drawn on a terminal or written to a log goes through
here (a display name like "\\x1b[2J" must not clear an operator's screen).
"""

from __future__ import annotations

import unicodedata

__all__ = ["terminal_safe"]


def terminal_safe(text: str, limit: int = 64) -> str:
    out = []
    for ch in text:
        if unicodedata.category(ch)[0] in ("C", "Z") and ch != " ":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    safe = "".join(out)
    return safe if len(safe) <= limit else safe[: limit - 1] + "\u2026"
