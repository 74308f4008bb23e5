"""Token ids -> answer text while it streams: incremental, and never showing what may be taken back.

Shared by the engine's stream and the server's batched streams. Re-decoding the whole answer for
every new token costs O(n) per token (O(n^2) per answer, ~10% of a GPU decode step at a thousand
tokens); this decodes only a short window of recent tokens, the way text-generation servers do:
the text of `ids[prefix:]` minus the text of `ids[prefix:read]` is what the new tokens added, and
the window starts one step back so tokenizers that drop a leading space decode in context.

What is shown is held back while it could still be cut: the last characters that may be the start
of a stop string, and a half UTF-8 character (the decoder's U+FFFD). No torch here.
"""

from __future__ import annotations


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text up to the first stop string (excluded), and whether one was found."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def decode_answer(tokenizer, ids: list[int]) -> str:
    """Answer text; the space the model puts after "Assistant:" is not part of the answer."""
    return tokenizer.decode(ids, skip_special_tokens=True).lstrip()


class AnswerText:
    def __init__(self, tokenizer, stops: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.ids: list[int] = []
        self.emitted = ""  # what add() has handed out so far
        self._text = ""  # decoded so far, leading space included
        self._prefix = self._read = 0
        self._hold = max((len(s) for s in self.stops), default=1) - 1

    def add(self, new_ids: list[int]) -> str:
        """Append generated tokens; return the text that became safe to show ("" when none)."""
        self.ids.extend(new_ids)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        text = self._text.lstrip()
        if cut_at_stop(text, self.stops)[1]:
            return ""
        safe = len(text) - self._hold
        if safe <= len(self.emitted):
            return ""
        delta, self.emitted = text[len(self.emitted):safe], text[:safe]
        return delta

    @property
    def stopped(self) -> bool:
        """A stop string is in the text decoded so far (the answer ends there)."""
        return bool(self.stops) and cut_at_stop(self._text, self.stops)[1]

    def finish(self) -> tuple[str, bool, str]:
        """(answer, stopped, rest): the whole answer decoded once and cut at the first stop string,
        whether one was found, and the part of it not shown yet."""
        answer, stopped = cut_at_stop(decode_answer(self.tokenizer, self.ids), self.stops)
        rest = answer[len(self.emitted):] if answer.startswith(self.emitted) else ""
        return answer, stopped, rest

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
