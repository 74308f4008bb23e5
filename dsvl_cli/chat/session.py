"""The chat session's state: conversation, KV cache, pending images and settings; no I/O.

A front end (chat/ui.py, for a terminal or a pipe) hands each input to chat/commands.py's `handle`,
which asks a question here or runs a slash command on this state, prints the `Reply`, and when the
reply asks for an answer calls `respond` with a function that produces one (streaming it as it
likes). Keeping the state here keeps it testable with a plain `engine.run`.

KV reuse: one PromptCache lives as long as the session. The engine reuses the longest common token
prefix of the cache and the new prompt (never cutting an image), so edits to the history (/undo,
/retry, /system, /forget) need no bookkeeping here: the next turn crops the cache where the history
diverges. /clear and /load start a new conversation and drop the cache at once (frees its memory).

Limits: text only reaches the model through `ask`; a question that starts with "/" is written
"//..." (the first slash is removed). `/set stop` is not offered (stop strings are an API option).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dsvl_cli.chat.turns import Reply, Totals, AnsweredTurn
from dsvl_cli.conversation import Conversation, Message, check_text
from dsvl_cli.engine.backend import Backend
from dsvl_cli.errors import ContextLengthError, ImageLoadError, UsageError
from dsvl_cli.images import LoadedImage, load_images
from dsvl_cli.results import Result
from dsvl_cli.settings import GenerationSettings

BLOCK = '"""'
Producer = Callable[[Conversation, GenerationSettings, "object | None"], Result]


def block_open(text: str) -> bool:
    """True while `text` is an unfinished \"\"\" block (the terminal keeps reading lines)."""
    stripped = text.strip()
    return stripped.startswith(BLOCK) and not (len(stripped) >= 2 * len(BLOCK) and stripped.endswith(BLOCK))


def unwrap_block(text: str) -> str:
    """The text inside a \"\"\" block (an unclosed one at end of input too); other text unchanged."""
    stripped = text.strip()
    if not stripped.startswith(BLOCK):
        return text
    inner = stripped[len(BLOCK):]
    if inner.endswith(BLOCK):
        inner = inner[: -len(BLOCK)]
    return inner.strip()


def check_chat_sources(sources: Sequence[str]) -> None:
    """In chat, stdin carries the conversation, so `-` cannot be an image."""
    if "-" in sources:
        raise ImageLoadError("-", "in chat, stdin carries the conversation; give the image as a file "
                                  "path, URL or data: URI")


def exchanges(conversation: Conversation) -> list[list[Message]]:
    """Messages grouped as exchanges: a user message and the answers after it."""
    groups: list[list[Message]] = []
    for message in conversation.messages:
        if message.role == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return groups


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ChatSession:
    def __init__(self, engine: Backend, generation: GenerationSettings, *, images: Sequence[LoadedImage] = (),
                 reuse: bool = True, exact_pixels: bool = False):
        self.engine = engine
        self.exact_pixels = exact_pixels  # --exact-pixels: how /image and /load decode
        self.load_images = load_images  # /image's loader (a script's pipe reads ahead: chat/ahead.py)
        self.generation = generation
        self.conversation = Conversation(system=generation.system)
        self.cache = engine.new_cache() if reuse else None  # None where the backend keeps no KV
        self.pending: list[LoadedImage] = list(images)  # for the next question
        self.last: AnsweredTurn | None = None
        self.totals = Totals()
        self.forgotten = 0  # exchanges dropped by /forget: turns keep their numbers as asked
        self._undo_point: tuple[Conversation, list[LoadedImage]] | None = None  # if the turn fails

    # -- inputs -----------------------------------------------------------------------------------
    def ask(self, text: str) -> Reply:
        try:
            check_text(text, "question")
        except UsageError as err:
            return Reply.failure(err)
        self._save_undo_point()
        self.conversation.add_user(text, self.pending)
        self.pending = []
        return Reply(answer=True)

    def respond(self, produce: Producer) -> AnsweredTurn:
        """Answer the last question with `produce(conversation, generation, cache)`.

        If producing fails (context too long, out of memory, Ctrl-C before any answer), the
        conversation and the attached images are as they were before the question, and the error
        is raised for the front end to report.
        """
        try:
            result = produce(self.conversation, self.generation, self.cache)
        except ContextLengthError as err:
            advice = self._context_advice(err)
            self._restore_undo_point()
            raise ContextLengthError(advice) from None
        except BaseException:  # restore, then let the front end report it
            self._restore_undo_point()
            if self.cache is not None:  # cut mid-turn: the KV may not match what it says it holds
                self.cache.clear()
            raise
        self._undo_point = None
        self.conversation.add_assistant(result.answer, result.finish_reason)
        number = self.forgotten + len(exchanges(self.conversation))
        question = exchanges(self.conversation)[-1][0]
        self.last = AnsweredTurn(number, question.text, [i.source for i in question.images], result)
        self.totals.add(result.stats)
        return self.last

    def at_context_end(self, turn: AnsweredTurn) -> bool:
        """True when the answer stopped because the context was full, not at --max-new-tokens."""
        stats, limit = turn.result.stats, self.engine.context_length
        return turn.result.finish_reason == "length" and limit is not None and \
            stats.prompt_tokens + stats.generated_tokens >= limit

    def prompt_hint(self) -> str:
        return f"[{plural(len(self.pending), 'image')}] " if self.pending else ""

    # -- what commands change (chat/commands.py) -------------------------------------------------
    def retry(self) -> None:
        """The last question is asked again: its answer (if any) goes, the next `respond` answers it."""
        self._save_undo_point()
        if self.conversation.messages[-1].role == "assistant":
            self.conversation.messages.pop()

    def restart(self, conversation: Conversation) -> None:
        """Go on with `conversation` (/clear: an empty one, /load: a saved one): nothing attached, the
        KV cache dropped at once (frees its memory)."""
        self.conversation = conversation
        self.generation = self.generation.replace(system=conversation.system)
        self.pending, self.forgotten = [], 0
        if self.cache is not None:
            self.cache.clear()

    def set_system(self, system: str | None) -> None:
        self.conversation.system = system
        self.generation = self.generation.replace(system=system)

    # -- helpers ----------------------------------------------------------------------------------
    def _save_undo_point(self) -> None:
        self._undo_point = (self.conversation.copy(), list(self.pending))

    def _restore_undo_point(self) -> None:
        if self._undo_point is not None:
            self.conversation, self.pending = self._undo_point
            self._undo_point = None

    def _context_advice(self, err: ContextLengthError) -> str:
        """Why the question does not fit, and the smallest /forget that makes it fit (if any does)."""
        limit = self.engine.context_length
        if limit is None or not self.engine.counts_tokens:  # a remote engine: no tokenizer here
            return f"{err.message}; the question was not sent: /forget N drops the oldest N exchanges, " \
                   "/clear starts over"
        conversation = self.conversation.copy()
        size = self._prompt_tokens(conversation)
        text = (f"this question would make the conversation {size} tokens, past the model's context "
                f"length of {limit}; it was not sent. ")
        groups = exchanges(conversation)
        for count in range(1, len(groups)):
            conversation.messages = [m for group in groups[count:] for m in group]
            if self._prompt_tokens(conversation) < limit:
                return text + f"/forget {count} drops the oldest {plural(count, 'exchange')} so it fits, " \
                              "/clear starts over; then ask again"
        return text + "It is too long even on its own: use fewer images or a shorter question (/clear starts over)"

    def _prompt_tokens(self, conversation: Conversation) -> int:
        return self.engine.count_tokens(conversation)
