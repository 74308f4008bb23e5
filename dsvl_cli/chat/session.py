"""The chat session: conversation, KV cache, pending images and slash commands, without terminal I/O.

A front end (repl.py: a terminal or a pipe) hands each input to `ChatSession.handle`, prints the
`Reply`, and when the reply asks for an answer calls `respond` with a function that produces one
(streaming it as it likes). Keeping the state here keeps it testable with a plain `engine.run`.

KV reuse: one PromptCache lives as long as the session. The engine reuses the longest common token
prefix of the cache and the new prompt (never cutting an image), so edits to the history (/undo,
/retry, /system, /forget) need no bookkeeping here: the next turn crops the cache where the history
diverges. /clear and /load start a new conversation and drop the cache at once (frees its memory).

Limits: text only reaches the model through `handle`; a question that starts with "/" is written
"//..." (the first slash is removed). `/set stop` is not offered (stop strings are an API option).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence

from dsvl_cli.chat import files as chat_files
from dsvl_cli.chat.turns import Reply, Totals, Turn
from dsvl_cli.conversation import Conversation, Message, check_text
from dsvl_cli.engine.backend import Backend
from dsvl_cli.errors import ContextLengthError, DsvlError, ExitCode, ImageLoadError, UsageError
from dsvl_cli.images import LoadedImage, load_images
from dsvl_cli.images.selection import PICTURES_PER_QUESTION
from dsvl_cli.render import stats_line
from dsvl_cli.results import Result
from dsvl_cli.settings import GenerationSettings
from dsvl_cli.structured.spec import parse_choices, parse_regex, parse_schema

BLOCK = '"""'
HELP = """\
Ask a question, or use a command:
  /image SRC...      attach images to your next question (path, http(s) URL, data: URI)
  /images            list attached images, and those already in the conversation
  /drop N|all        detach attached image N (see /images)
  /undo              remove the last exchange (its images are attached again)
  /retry             answer the last question again
  /forget [N]        drop the oldest N exchanges (default 1) to make room in the context
  /clear             start a new conversation (same model and settings)
  /system [TEXT]     show or set the system prompt (--default: the model's own; "": none)
  /set [KEY VALUE]   show or change a generation option (max_new_tokens, temperature, top_p,
                     top_k, repetition_penalty, seed; "none" resets an optional one);
                     schema FILE|JSON|SHORT, regex PATTERN, choices a,b,c (scored labels), or off
  /save FILE         save the conversation: .json (restore with /load) or .md (a transcript);
                     asks before replacing a file (/save! FILE replaces it without asking)
  /load FILE         restore a conversation saved as JSON
  /stats             token counts and timings: last answer and the whole session
  /help              this list
  /exit              leave (also Ctrl-D)
Multi-line input: start and end it with \"\"\" (or press Alt-Enter for a new line).
A question that starts with / is written //..."""
COMMANDS = ("/image", "/images", "/drop", "/undo", "/retry", "/forget", "/clear", "/system", "/set",
            "/save", "/load", "/stats", "/help", "/exit", "/quit")
# /set KEY -> (type, may be None)
SETTABLE: dict[str, tuple[type, bool]] = {
    "max_new_tokens": (int, False), "temperature": (float, False), "top_p": (float, True),
    "top_k": (int, True), "repetition_penalty": (float, True), "seed": (int, True),
}
_KEY_ALIASES = {"n": "max_new_tokens", "t": "temperature"}
# /set KEY -> the parser of that answer format (structured/spec.py) and its kind
FORMAT_KEYS = {"schema": (parse_schema, "json_schema"), "regex": (parse_regex, "regex"),
               "choices": (parse_choices, "choices")}

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


def _plural(n: int, word: str) -> str:
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
        self.last: Turn | None = None
        self.totals = Totals()
        self.forgotten = 0  # exchanges dropped by /forget: turns keep their numbers as asked
        self._undo_point: tuple[Conversation, list[LoadedImage]] | None = None  # if the turn fails

    # -- inputs -----------------------------------------------------------------------------------
    def handle(self, text: str) -> Reply:
        """One input line or block: a question (Reply.answer) or a slash command."""
        text = unwrap_block(text).strip()
        if not text:
            return Reply()
        if text.startswith("//"):
            return self.ask(text[1:])
        if text.startswith("/"):
            return self.command(text)
        return self.ask(text)

    def ask(self, text: str) -> Reply:
        try:
            check_text(text, "question")
        except UsageError as err:
            return Reply.failure(err)
        self._save_undo_point()
        self.conversation.add_user(text, self.pending)
        self.pending = []
        return Reply(answer=True)

    def respond(self, produce: Producer) -> Turn:
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
        self.last = Turn(number, question.text, [i.source for i in question.images], result)
        self.totals.add(result.stats)
        return self.last

    def at_context_end(self, turn: Turn) -> bool:
        """True when the answer stopped because the context was full, not at --max-new-tokens."""
        stats, limit = turn.result.stats, self.engine.context_length
        return turn.result.finish_reason == "length" and limit is not None and \
            stats.prompt_tokens + stats.generated_tokens >= limit

    def prompt_hint(self) -> str:
        return f"[{_plural(len(self.pending), 'image')}] " if self.pending else ""

    # -- commands ---------------------------------------------------------------------------------
    def command(self, line: str) -> Reply:
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        if name == "/save!":  # overwrite without asking
            try:
                return self._cmd_save(arg, force=True)
            except DsvlError as err:
                return Reply.failure(err)
        handler = getattr(self, "_cmd_" + name[1:], None) if name in COMMANDS else None
        if handler is None:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return Reply(f"unknown command {name}{hint}; /help lists the commands, // starts a question "
                         "with a slash", code=int(ExitCode.USAGE))
        try:
            return handler(arg)
        except DsvlError as err:
            return Reply.failure(err)

    def _cmd_help(self, arg: str) -> Reply:
        return Reply(HELP)

    def _cmd_exit(self, arg: str) -> Reply:
        return Reply(exit=True)

    _cmd_quit = _cmd_exit

    def _cmd_image(self, arg: str) -> Reply:
        sources = chat_files.split_sources(arg)
        if not sources:
            raise UsageError("usage: /image SRC... (a path, http(s) URL or data: URI)")
        check_chat_sources(sources)
        room = PICTURES_PER_QUESTION - len(self.pending)  # a whole PDF past it is refused before rendering
        images = self.load_images(sources, exact=self.exact_pixels, max_pictures=room)
        self.pending.extend(images)
        return Reply(f"attached {', '.join(i.source for i in images)} to your next question "
                     f"({_plural(len(self.pending), 'image')} attached)")

    def _cmd_images(self, arg: str) -> Reply:
        lines = [f"  [{k}] {image.source}" for k, image in enumerate(self.pending, 1)]
        lines = ["attached to your next question:" if lines else "no images attached (/image SRC)"] + lines
        for number, group in enumerate(exchanges(self.conversation), 1):
            lines += [f"  turn {number}: {image.source}" for image in group[0].images]
        if len(self.conversation.images):
            lines.insert(len(self.pending) + 1, "in the conversation:")
        return Reply("\n".join(lines))

    def _cmd_drop(self, arg: str) -> Reply:
        if arg == "all":
            count, self.pending = len(self.pending), []
            return Reply(f"detached {_plural(count, 'image')}")
        if not arg.isdigit() or not 1 <= int(arg) <= len(self.pending):
            raise UsageError(f"usage: /drop N with N from 1 to {len(self.pending)}, or /drop all (see /images)"
                             if self.pending else "no images attached; nothing to drop")
        image = self.pending.pop(int(arg) - 1)
        return Reply(f"detached {image.source}")

    def _cmd_clear(self, arg: str) -> Reply:
        self.conversation = Conversation(system=self.conversation.system)
        self.pending, self.forgotten = [], 0
        if self.cache is not None:
            self.cache.clear()
        return Reply("new conversation (same model and settings)")

    def _cmd_undo(self, arg: str) -> Reply:
        groups = exchanges(self.conversation)
        if not groups:
            raise UsageError("nothing to undo")
        question = groups[-1][0]
        del self.conversation.messages[-len(groups[-1]):]
        self.pending = list(question.images) + self.pending
        again = f"; its {_plural(len(question.images), 'image')} attached again" if question.images else ""
        return Reply(f"removed the last exchange ({_clip(question.text)}){again}")

    def _cmd_retry(self, arg: str) -> Reply:
        messages = self.conversation.messages
        if not messages:
            raise UsageError("nothing to retry: ask a question first")
        self._save_undo_point()
        if messages[-1].role == "assistant":
            messages.pop()
        return Reply(answer=True)

    def _cmd_forget(self, arg: str) -> Reply:
        if arg and not arg.isdigit():
            raise UsageError("usage: /forget N (drop the oldest N exchanges)")
        groups = exchanges(self.conversation)
        count = min(int(arg or 1), len(groups))
        if count == 0:
            raise UsageError("nothing to forget: the conversation is empty")
        self.conversation.messages = [m for group in groups[count:] for m in group]
        self.forgotten += count
        return Reply(f"forgot the oldest {_plural(count, 'exchange')} ({len(groups) - count} left)")

    def _cmd_system(self, arg: str) -> Reply:
        if not arg:
            current = self.conversation.system
            return Reply("system prompt: the model's default" if current is None else
                         f"system prompt: {current!r}")
        self.conversation.system = None if arg == "--default" else "" if arg in ('""', "''") else arg
        self.generation = self.generation.replace(system=self.conversation.system)
        return self._cmd_system("")

    def _cmd_set(self, arg: str) -> Reply:
        if not arg:
            values = [f"  {key} = {getattr(self.generation, key)}" for key in SETTABLE]
            system = self.conversation.system
            values.append(f"  system = {'(the model default)' if system is None else repr(system)}")
            fmt = self.generation.answer_format
            values.append(f"  format = {fmt.describe() if fmt else 'free text (/set schema|regex|choices ...)'}")
            return Reply("\n".join(["generation options (/set KEY VALUE):", *values]))
        key, _, raw = arg.partition(" ")
        key = _KEY_ALIASES.get(key, key.lstrip("-").replace("-", "_").lower())
        raw = raw.strip()
        if key == "system":
            return self._cmd_system(raw or "--default")
        if key in FORMAT_KEYS:
            return self._set_format(key, raw)
        if key not in SETTABLE:
            raise UsageError(f"/set {key}: not a generation option; one of {', '.join(SETTABLE)}, system, "
                             f"{', '.join(FORMAT_KEYS)}")
        kind, optional = SETTABLE[key]
        if not raw:
            raise UsageError(f"usage: /set {key} VALUE")
        if optional and raw.lower() in ("none", "off", "default"):
            value = None
        else:
            try:
                value = kind(raw)
            except ValueError:
                raise UsageError(f"/set {key}: {raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        try:
            self.generation = self.generation.replace(**{key: value})
        except UsageError as err:  # the settings name the command-line option; name the /set key
            raise UsageError(f"/set {key} {raw}: {err.message.partition(': ')[2] or err.message}") from None
        return Reply(f"{key} = {value}")

    def _set_format(self, key: str, raw: str) -> Reply:
        """/set schema FILE|JSON|SHORT|off, /set regex PATTERN|off, /set choices a,b,c|@FILE|off:
        the answer format of later turns (choices: the most probable label, scored not generated)."""
        parse, kind = FORMAT_KEYS[key]
        if not raw:
            raise UsageError(f"usage: /set {key} VALUE (or off)")
        current = self.generation.answer_format
        if raw.lower() in ("off", "none"):
            if current is not None and current.kind == kind:
                self.generation = self.generation.replace(answer_format=None)
            return Reply(f"{key} = off")
        self.generation = self.generation.replace(answer_format=parse(raw, f"/set {key}"))
        return Reply(f"format = {self.generation.answer_format.describe()}")

    def _cmd_save(self, arg: str, *, force: bool = False) -> Reply:
        """Never replaces a file unasked: an existing one (a symlink too) needs /save! FILE, which
        a terminal offers to run (Reply.confirm); the write itself is atomic."""
        path = chat_files.target(arg)
        if not force and (path.exists() or path.is_symlink()):
            what = (f"{path} is a symbolic link (to {os.readlink(path)}); /save! {arg} replaces the link with the "
                    "saved file") if path.is_symlink() else f"{path} exists; /save! {arg} replaces it"
            return Reply(what, code=int(ExitCode.USAGE), confirm=f"/save! {arg}")
        path = chat_files.save(self.conversation, arg)
        what = "a Markdown transcript" if chat_files.is_markdown(path) else "JSON; /load restores it"
        unsaved = (f"; {'the attached image is' if len(self.pending) == 1 else 'the attached images are'} "
                   "not saved") if self.pending else ""
        return Reply(f"saved {_plural(len(exchanges(self.conversation)), 'exchange')} to {path} ({what}){unsaved}")

    def _cmd_load(self, arg: str) -> Reply:
        path, self.conversation = chat_files.load(arg, exact=self.exact_pixels)
        self.generation = self.generation.replace(system=self.conversation.system)
        self.pending, self.last, self.forgotten = [], None, 0
        if self.cache is not None:
            self.cache.clear()
        text = f"loaded {_plural(len(exchanges(self.conversation)), 'exchange')} from {path}"
        if self.conversation.messages and self.conversation.messages[-1].role == "user":
            text += "; it ends with an unanswered question: /retry answers it"
        return Reply(text)

    def _cmd_stats(self, arg: str) -> Reply:
        if self.last is None:
            return Reply("no answers yet")
        return Reply(f"last answer: {stats_line(self.last.result.stats.to_dict())}\n{self.totals.line()}")

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
                return text + f"/forget {count} drops the oldest {_plural(count, 'exchange')} so it fits, " \
                              "/clear starts over; then ask again"
        return text + "It is too long even on its own: use fewer images or a shorter question (/clear starts over)"

    def _prompt_tokens(self, conversation: Conversation) -> int:
        return self.engine.count_tokens(conversation)


def _clip(text: str, width: int = 40) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= width else line[: width - 1] + "…")
