"""`--method generate`: the letter (or yes/no) a generated answer gives, by rules; no LLM judge.

Letters, the first rule that answers wins:
1. the whole answer is one letter, maybe bracketed or punctuated: `B`, `(B)`, `b.`, `**B**`;
2. it starts with a letter and `)`, `.` or `:` and text: `b) cat`, `B. cat`, `(B) cat`;
3. a phrase names it, the letter in capitals: `The answer is B.`, `Answer: (C)`, `option D`;
4. VLMEvalKit's `can_infer_option`: punctuation to spaces, exactly one option letter stands alone
   as a word (a capital `A` in a longer answer may be the article: then nothing);
5. VLMEvalKit's `can_infer_text`: exactly one option's text appears in the answer (any case).
Anything else is unparsable: None, counted wrong (and counted as `unparsed`). Only letters that
are options of the row count.

Yes/no, as VLMEvalKit's `YOrN_Extraction`: the words of the answer (lowercase, punctuation
dropped) hold `yes` and not `no` -> Yes, `no` and not `yes` -> No, else unparsable.
"""

from __future__ import annotations

import re

_PUNCTUATION = ".()[],:;!*#{}"
_ALONE = re.compile(r"^[\s(\[*]*([A-Za-z])[\s)\]*.:]*$")
_LEADING = re.compile(r"^[\s(\[*]*([A-Za-z])[)\].:]\s+\S")
_PHRASE = re.compile(r"(?i:\b(?:answer|option|choice)\b(?:\s+is)?\s*:?\s*)[(\[*]*([A-Z])(?![A-Za-z0-9])")


def letter(answer: str, options: tuple[tuple[str, str], ...]) -> str | None:
    """The option letter `answer` gives, or None."""
    letters = [k for k, _ in options]
    text = answer.strip()
    if not text:
        return None
    for pattern in (_ALONE, _LEADING):
        found = pattern.match(text)
        if found and found.group(1).upper() in letters:
            return found.group(1).upper()
    found = _PHRASE.search(text)
    if found and found.group(1) in letters:
        return found.group(1)
    return _standalone(text, letters) or _by_text(text, options)


def _standalone(text: str, letters: list[str]) -> str | None:
    for c in _PUNCTUATION:
        text = text.replace(c, " ")
    words = text.split()
    hits = [k for k in letters if k in words]
    if len(hits) != 1 or ("A" in words and len(words) > 3):
        return None
    return hits[0]


def _by_text(text: str, options: tuple[tuple[str, str], ...]) -> str | None:
    low = text.lower()
    hits = [k for k, option in options if option and option.lower() in low]
    return hits[0] if len(hits) == 1 else None


def yes_no(answer: str) -> str | None:
    """Yes, No, or None."""
    text = answer.lower()
    for c in _PUNCTUATION + "?'\"":
        text = text.replace(c, " ")
    words = set(text.split())
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return None
