"""Chat's slash commands: one `Command` per command in `TABLE`, /help written from the table.

`handle` is what a front end calls with each input: a question goes to the session
(`ChatSession.ask`), a line that starts with "/" is looked up in the table and run. A command's
`run(session, arg)` changes the session's state and returns the Reply to show; /save, /load and
/stats (files and printed numbers) live here, so the session itself holds state only.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

from dsvl_cli.chat import files as chat_files
from dsvl_cli.chat.session import ChatSession, check_chat_sources, exchanges, plural, unwrap_block
from dsvl_cli.chat.turns import Reply, Totals
from dsvl_cli.conversation import Conversation
from dsvl_cli.errors import DsvlError, ExitCode, UsageError
from dsvl_cli.images.selection import PICTURES_PER_QUESTION
from dsvl_cli.render import stats_line
from dsvl_cli.structured.spec import parse_choices, parse_regex, parse_schema

# /set KEY -> (type, may be None)
SETTABLE: dict[str, tuple[type, bool]] = {
    "max_new_tokens": (int, False), "temperature": (float, False), "top_p": (float, True),
    "top_k": (int, True), "repetition_penalty": (float, True), "seed": (int, True),
}
# /set KEY -> the parser of that answer format (structured/spec.py) and its kind
FORMAT_KEYS = {"schema": (parse_schema, "json_schema"), "regex": (parse_regex, "regex"),
               "choices": (parse_choices, "choices")}

_KEY_ALIASES = {"n": "max_new_tokens", "t": "temperature"}
_HELP_INDENT = 21  # where a command's help starts in /help


@dataclass(frozen=True)
class Command:
    """One slash command: `usage` is its argument help, `help` its line in /help (continued on more
    lines where it holds a newline); an unlisted command is left out of /help and completion."""

    name: str
    usage: str
    help: str
    run: Callable[[ChatSession, str], Reply]
    aliases: tuple[str, ...] = ()
    listed: bool = True


def handle(session: ChatSession, text: str) -> Reply:
    """One input line or block: a question (Reply.answer) or a slash command."""
    text = unwrap_block(text).strip()
    if not text:
        return Reply()
    if text.startswith("//"):
        return session.ask(text[1:])
    if text.startswith("/"):
        return dispatch(session, text)
    return session.ask(text)


def dispatch(session: ChatSession, line: str) -> Reply:
    """Run the command `line` names (an unknown one: a usage failure that suggests the closest name)."""
    name, _, arg = line.partition(" ")
    name, arg = name.lower(), arg.strip()
    command = _BY_NAME.get(name)
    if command is None:
        close = difflib.get_close_matches(name, NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return Reply(f"unknown command {name}{hint}; /help lists the commands, // starts a question "
                     "with a slash", code=int(ExitCode.USAGE))
    try:
        return command.run(session, arg)
    except DsvlError as err:
        return Reply.failure(err)


def help_text() -> str:
    """/help: the listed commands with their usage and help, in the table's order."""
    lines = ["Ask a question, or use a command:"]
    for command in TABLE:
        if command.listed:
            usage = f"{command.name} {command.usage}".strip()
            first, *more = command.help.split("\n")
            lines.append(f"  {usage:<{_HELP_INDENT - 3}} {first}")
            lines += [" " * _HELP_INDENT + line for line in more]
    lines += ['Multi-line input: start and end it with """ (or press Alt-Enter for a new line).',
              "A question that starts with / is written //..."]
    return "\n".join(lines)


def totals_line(totals: Totals) -> str:
    """/stats' line for the whole session."""
    share = f", {100 * totals.cached_tokens / totals.prompt_tokens:.0f}%" if totals.prompt_tokens else ""
    return (f"session: {totals.turns} answers · {totals.prompt_tokens} prompt tokens ({totals.cached_tokens} "
            f"cached{share}) · {totals.generated_tokens} generated · total {totals.total_s:.2f}s")


# -- the commands ---------------------------------------------------------------------------------
def _image(session: ChatSession, arg: str) -> Reply:
    sources = chat_files.split_sources(arg)
    if not sources:
        raise UsageError("usage: /image SRC... (a path, http(s) URL or data: URI)")
    check_chat_sources(sources)
    room = PICTURES_PER_QUESTION - len(session.pending)  # a whole PDF past it is refused before rendering
    images = session.load_images(sources, exact=session.exact_pixels, max_pictures=room)
    session.pending.extend(images)
    return Reply(f"attached {', '.join(i.source for i in images)} to your next question "
                 f"({plural(len(session.pending), 'image')} attached)")


def _images(session: ChatSession, arg: str) -> Reply:
    lines = [f"  [{k}] {image.source}" for k, image in enumerate(session.pending, 1)]
    lines = ["attached to your next question:" if lines else "no images attached (/image SRC)"] + lines
    for number, group in enumerate(exchanges(session.conversation), 1):
        lines += [f"  turn {number}: {image.source}" for image in group[0].images]
    if len(session.conversation.images):
        lines.insert(len(session.pending) + 1, "in the conversation:")
    return Reply("\n".join(lines))


def _drop(session: ChatSession, arg: str) -> Reply:
    if arg == "all":
        count, session.pending = len(session.pending), []
        return Reply(f"detached {plural(count, 'image')}")
    if not arg.isdigit() or not 1 <= int(arg) <= len(session.pending):
        raise UsageError(f"usage: /drop N with N from 1 to {len(session.pending)}, or /drop all (see /images)"
                         if session.pending else "no images attached; nothing to drop")
    image = session.pending.pop(int(arg) - 1)
    return Reply(f"detached {image.source}")


def _undo(session: ChatSession, arg: str) -> Reply:
    groups = exchanges(session.conversation)
    if not groups:
        raise UsageError("nothing to undo")
    question = groups[-1][0]
    del session.conversation.messages[-len(groups[-1]):]
    session.pending = list(question.images) + session.pending
    again = f"; its {plural(len(question.images), 'image')} attached again" if question.images else ""
    return Reply(f"removed the last exchange ({_clip(question.text)}){again}")


def _retry(session: ChatSession, arg: str) -> Reply:
    if not session.conversation.messages:
        raise UsageError("nothing to retry: ask a question first")
    session.retry()
    return Reply(answer=True)


def _forget(session: ChatSession, arg: str) -> Reply:
    if arg and not arg.isdigit():
        raise UsageError("usage: /forget N (drop the oldest N exchanges)")
    groups = exchanges(session.conversation)
    count = min(int(arg or 1), len(groups))
    if count == 0:
        raise UsageError("nothing to forget: the conversation is empty")
    session.conversation.messages = [m for group in groups[count:] for m in group]
    session.forgotten += count
    return Reply(f"forgot the oldest {plural(count, 'exchange')} ({len(groups) - count} left)")


def _clear(session: ChatSession, arg: str) -> Reply:
    session.restart(Conversation(system=session.conversation.system))
    return Reply("new conversation (same model and settings)")


def _system(session: ChatSession, arg: str) -> Reply:
    if arg:
        session.set_system(None if arg == "--default" else "" if arg in ('""', "''") else arg)
    current = session.conversation.system
    return Reply("system prompt: the model's default" if current is None else f"system prompt: {current!r}")


def _set(session: ChatSession, arg: str) -> Reply:
    if not arg:
        values = [f"  {key} = {getattr(session.generation, key)}" for key in SETTABLE]
        system = session.conversation.system
        values.append(f"  system = {'(the model default)' if system is None else repr(system)}")
        fmt = session.generation.answer_format
        values.append(f"  format = {fmt.describe() if fmt else 'free text (/set schema|regex|choices ...)'}")
        return Reply("\n".join(["generation options (/set KEY VALUE):", *values]))
    key, _, raw = arg.partition(" ")
    key = _KEY_ALIASES.get(key, key.lstrip("-").replace("-", "_").lower())
    raw = raw.strip()
    if key == "system":
        return _system(session, raw or "--default")
    if key in FORMAT_KEYS:
        return _set_format(session, key, raw)
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
        session.generation = session.generation.replace(**{key: value})
    except UsageError as err:  # the settings name the command-line option; name the /set key
        raise UsageError(f"/set {key} {raw}: {err.message.partition(': ')[2] or err.message}") from None
    return Reply(f"{key} = {value}")


def _set_format(session: ChatSession, key: str, raw: str) -> Reply:
    """/set schema FILE|JSON|SHORT|off, /set regex PATTERN|off, /set choices a,b,c|@FILE|off:
    the answer format of later turns (choices: the most probable label, scored not generated)."""
    parse, kind = FORMAT_KEYS[key]
    if not raw:
        raise UsageError(f"usage: /set {key} VALUE (or off)")
    current = session.generation.answer_format
    if raw.lower() in ("off", "none"):
        if current is not None and current.kind == kind:
            session.generation = session.generation.replace(answer_format=None)
        return Reply(f"{key} = off")
    session.generation = session.generation.replace(answer_format=parse(raw, f"/set {key}"))
    return Reply(f"format = {session.generation.answer_format.describe()}")


def _save(session: ChatSession, arg: str, *, force: bool = False) -> Reply:
    """Never replaces a file unasked: an existing one (a symlink too) needs /save! FILE, which
    a terminal offers to run (Reply.confirm); the write itself is atomic."""
    path = chat_files.target(arg)
    if not force and (path.exists() or path.is_symlink()):
        what = (f"{path} is a symbolic link (to {os.readlink(path)}); /save! {arg} replaces the link with the "
                "saved file") if path.is_symlink() else f"{path} exists; /save! {arg} replaces it"
        return Reply(what, code=int(ExitCode.USAGE), confirm=f"/save! {arg}")
    path = chat_files.save(session.conversation, arg)
    what = "a Markdown transcript" if chat_files.is_markdown(path) else "JSON; /load restores it"
    unsaved = (f"; {'the attached image is' if len(session.pending) == 1 else 'the attached images are'} "
               "not saved") if session.pending else ""
    return Reply(f"saved {plural(len(exchanges(session.conversation)), 'exchange')} to {path} ({what}){unsaved}")


def _load(session: ChatSession, arg: str) -> Reply:
    path, conversation = chat_files.load(arg, exact=session.exact_pixels)
    session.restart(conversation)
    session.last = None
    text = f"loaded {plural(len(exchanges(conversation)), 'exchange')} from {path}"
    if conversation.messages and conversation.messages[-1].role == "user":
        text += "; it ends with an unanswered question: /retry answers it"
    return Reply(text)


def _stats(session: ChatSession, arg: str) -> Reply:
    if session.last is None:
        return Reply("no answers yet")
    return Reply(f"last answer: {stats_line(session.last.result.stats.to_dict())}\n{totals_line(session.totals)}")


def _clip(text: str, width: int = 40) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= width else line[: width - 1] + "…")


TABLE: tuple[Command, ...] = (
    Command("/image", "SRC...", "attach images to your next question (path, http(s) URL, data: URI)", _image),
    Command("/images", "", "list attached images, and those already in the conversation", _images),
    Command("/drop", "N|all", "detach attached image N (see /images)", _drop),
    Command("/undo", "", "remove the last exchange (its images are attached again)", _undo),
    Command("/retry", "", "answer the last question again", _retry),
    Command("/forget", "[N]", "drop the oldest N exchanges (default 1) to make room in the context", _forget),
    Command("/clear", "", "start a new conversation (same model and settings)", _clear),
    Command("/system", "[TEXT]", "show or set the system prompt (--default: the model's own; \"\": none)", _system),
    Command("/set", "[KEY VALUE]", "show or change a generation option (max_new_tokens, temperature, top_p,\n"
            "top_k, repetition_penalty, seed; \"none\" resets an optional one);\n"
            "schema FILE|JSON|SHORT, regex PATTERN, choices a,b,c (scored labels), or off", _set),
    Command("/save", "FILE", "save the conversation: .json (restore with /load) or .md (a transcript);\n"
            "asks before replacing a file (/save! FILE replaces it without asking)", _save),
    Command("/save!", "FILE", "save the conversation, replacing the file without asking",
            lambda session, arg: _save(session, arg, force=True), listed=False),
    Command("/load", "FILE", "restore a conversation saved as JSON", _load),
    Command("/stats", "", "token counts and timings: last answer and the whole session", _stats),
    Command("/help", "", "this list", lambda session, arg: Reply(help_text())),
    Command("/exit", "", "leave (also Ctrl-D)", lambda session, arg: Reply(exit=True), aliases=("/quit",)),
)
_BY_NAME = {name: command for command in TABLE for name in (command.name, *command.aliases)}
# what completion offers and an unknown command is matched against
NAMES = tuple(name for command in TABLE if command.listed for name in (command.name, *command.aliases))
