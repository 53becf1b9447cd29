"""Near-duplicate responses: word 3-shingles of the normalised text, compared by Jaccard.

Templates answer many customers with nearly the same words (a name, an amount, a date apart);
reviewing twenty of them teaches nothing the first did not. Digits become ``0``, case and
punctuation go, and the queue compares *redacted* text, where names are ``[NAME]`` already.

>>> a = shingles("Your refund of £12.40 will arrive within 5 working days, [NAME]. Anything else?")
>>> jaccard(a, shingles("Your refund of £9.99 will arrive within 3 working days, [NAME]. Anything else?"))
1.0
>>> jaccard(a, shingles("You cannot open an ISA for a child; a junior ISA is the product for that.")) < 0.1
True
"""

from __future__ import annotations

import re

#: Jaccard similarity of shingle sets at or above which two responses are near-duplicates.
NEAR_DUPLICATE = 0.6
_WORD = re.compile(r"[a-z0]+")


def shingles(text: str, size: int = 3) -> frozenset[int]:
    words = _WORD.findall(re.sub(r"\d+(?:[.,]\d+)*", "0", text.lower()))
    if len(words) < size:
        return frozenset({hash(" ".join(words))})
    return frozenset(hash(" ".join(words[i:i + size])) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
