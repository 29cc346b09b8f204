"""Quotation marks: speech is written in straight double quotes in every corpus file.

Writer-1 of v1 wrote speech in single quotes, which a double-quote-only speech count reads as no speech at all;
:func:`normalise_quotes` rewrote those stories and the checker keeps every story in the one style.
"""

from __future__ import annotations

import re

# An opening ' not preceded by a letter or digit (so not the apostrophe of "don't" or "the 90's") and followed by
# one, up to a closing ' not followed by a letter; apostrophes between letters inside the quote ("'Don't go.'")
# belong to it. On the whole corpus this finds 375 spans, none longer than 150 characters or across lines.
SINGLE_QUOTED = re.compile(r"(?<![A-Za-z0-9])['\u2018](?=[A-Za-z0-9])((?:[^'\u2019\n]|(?<=[A-Za-z])['\u2019](?=[A-Za-z]))+?)"
                           r"['\u2019](?![A-Za-z])")
CURLY_DOUBLE = str.maketrans({"\u201c": '"', "\u201d": '"'})


def single_quoted_speech(text: str) -> list[str]:
    """The spans written in single quotes, speech or a quoted word (empty for a story in the house style)."""
    return [m for m in SINGLE_QUOTED.findall(text) if len(m) > 1]


def normalise_quotes(text: str) -> str:
    """Quotations in straight double quotes: single-quoted spans and curly double quotes rewritten, nothing else."""
    # one-letter spans are elisions ("rock 'n' roll"), not quotations
    return SINGLE_QUOTED.sub(lambda m: f'"{m.group(1)}"' if len(m.group(1)) > 1 else m.group(0),
                             text).translate(CURLY_DOUBLE)
