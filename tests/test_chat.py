"""`dsvl chat`: the session against plain `generate`, KV reuse, commands, pipes, and a real terminal.

The session tests drive ChatSession with the shared tiny-random engine (no model reload); the pipe
tests go through the CLI in-process; one test runs the REPL on a real pseudo-terminal.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import pytest

from conftest import EXAMPLES, REPO

N = 8  # new tokens per answer: short answers keep the tests fast


# -- helpers -------------------------------------------------------------------------------------
def _session(engine, images=(), **gen):
    from dsvl_cli.chat.session import ChatSession
    from dsvl_cli.images import load_images
    from dsvl_cli.settings import GenerationSettings

    return ChatSession(engine, GenerationSettings(max_new_tokens=N, **gen), images=load_images(list(images)))


def _say(session, text):
    """Handle one input; returns the Turn when it was answered, else the Reply."""
    from dsvl_cli.chat.commands import handle

    reply = handle(session, text)
    if not reply.answer:
        return reply
    return session.respond(lambda conversation, gen, cache: session.engine.run(conversation, gen, cache=cache))


class Reference:
    """The history as plain chat-template messages, answered from scratch by plain `generate`."""

    def __init__(self, reference):
        self.model, self.processor = reference
        self.messages: list[dict] = []
        self.images: list = []

    def user(self, text, images=()):
        from dsvl_cli.images import load_image

        self.images += [load_image(str(path)).image for path in images]
        self.messages.append({"role": "user", "content": [{"type": "image"} for _ in images]
                              + [{"type": "text", "text": text}]})

    def assistant(self, text):
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})

    def undo(self):  # the undone exchange had no image in these tests
        del self.messages[-2:]

    def answer(self) -> tuple[list[int], list[int]]:
        """(prompt ids, greedy new ids) for the history as it stands."""
        import torch

        prompt = self.processor.apply_chat_template(self.messages, add_generation_prompt=True)
        inputs = self.processor(text=prompt, images=self.images or None, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=N, do_sample=False)
        ids = inputs["input_ids"][0].tolist()
        return ids, out[0, len(ids):].tolist()


def _expected_cached(cached_ids: list[int], ids: list[int], image_token_id: int, per_image: int) -> int:
    """The longest common prefix with what the cache holds, at least one token left to prefill,
    never ending inside an image's placeholder run."""
    common = 0
    for old, new in zip(cached_ids, ids):
        if old != new:
            break
        common += 1
    keep = min(common, len(ids) - 1)
    positions = [i for i, tok in enumerate(ids) if tok == image_token_id]
    for start in positions[::per_image]:
        if start < keep < start + per_image:
            keep = start
    return keep


@pytest.fixture
def encoded_images(engine, monkeypatch):
    """How many images the vision towers encode, call by call (a list of batch sizes)."""
    inner = engine.model.model
    original = inner.get_image_features
    calls: list[int] = []

    @functools.wraps(original)  # generate() picks the arguments to pass from the signature
    def counting(*args, **kwargs):
        pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        calls.append(int(pixel_values.shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(inner, "get_image_features", counting)
    return calls


# -- the session against plain generate ------------------------------------------------------------
def test_scripted_conversation_equals_generate_from_scratch(engine, reference, encoded_images):
    """Image on turns 1 and 2, an unknown command, /retry, /undo: every greedy answer is plain
    `generate` over the same history, the cache holds exactly the common prefix, and images
    already in the cache are never encoded again."""
    shapes, chart = EXAMPLES / "shapes.png", EXAMPLES / "chart.png"
    session = _session(engine, [str(shapes)])
    ref = Reference(reference)
    per_image = engine.processor.num_image_tokens
    cache_holds: list[int] = []  # token ids whose KV the session's cache holds after each answer

    def turn(text, *, images=(), encoded=0, retry=False):
        if retry:
            del ref.messages[-1]  # the answer being retried
        else:
            ref.user(text, images)
        ids, expected = ref.answer()
        encoded_images.clear()
        result = _say(session, "/retry" if retry else text).result
        assert result.token_ids == expected, text
        assert result.stats.prompt_tokens == len(ids)
        assert result.stats.cached_tokens == _expected_cached(cache_holds, ids, engine.image_token_id, per_image)
        assert sum(encoded_images) == encoded  # only images outside the reused prefix
        ref.assistant(result.answer)
        cache_holds[:] = (ids + expected)[:-1]  # the last new token was never fed back
        return result

    first = turn("Describe the image.", images=[shapes], encoded=1)
    assert first.stats.cached_tokens == 0
    assert "attached" in _say(session, f"/image {chart}").text
    second = turn("Compare the two pictures.", images=[chart], encoded=1)
    assert second.stats.cached_tokens >= first.stats.prompt_tokens  # all of turn 1's prompt reused

    before = session.conversation.copy()
    reply = _say(session, "/colours")
    assert reply.error and reply.code == 2 and "unknown command /colours" in reply.text
    assert session.conversation.template_messages() == before.template_messages()  # never sent

    third = turn("And the colours?", encoded=0)
    assert third.stats.cached_tokens >= second.stats.prompt_tokens
    again = turn(None, retry=True, encoded=0)
    assert again.token_ids == third.token_ids
    assert again.stats.cached_tokens == again.stats.prompt_tokens - 1  # the whole prompt but one token

    assert "removed the last exchange" in _say(session, "/undo").text
    ref.undo()
    fourth = turn("Which one is brighter?", encoded=0)
    assert fourth.stats.cached_tokens >= second.stats.prompt_tokens
    assert len(session.conversation.messages) == 6


def test_undo_of_a_turn_with_an_image_attaches_it_again(engine, encoded_images):
    session = _session(engine)
    _say(session, "Hello.")
    _say(session, f"/image {EXAMPLES / 'sunset.jpg'}")
    _say(session, "What about this?")
    reply = _say(session, "/undo")
    assert "1 image attached again" in reply.text
    assert [i.source for i in session.pending] == [str(EXAMPLES / "sunset.jpg")]
    encoded_images.clear()
    turn = _say(session, "What is it?")
    assert turn.images == [str(EXAMPLES / "sunset.jpg")]
    assert encoded_images == []  # the same picture at the same place: its KV is still good
    assert turn.result.stats.cached_tokens > engine.processor.num_image_tokens
    assert turn.result.token_ids == engine.run(_without_last(session), session.generation).token_ids


@pytest.mark.parametrize("edit", ["swap", "forget"])
def test_a_different_picture_behind_the_same_placeholders_is_encoded_again(engine, encoded_images, edit):
    """Every image has the same placeholder ids: reuse must stop where the picture differs."""
    session = _session(engine, [str(EXAMPLES / "shapes.png")])
    _say(session, "What is it?")
    if edit == "swap":  # the same question, about another picture
        _say(session, "/undo")
        _say(session, "/drop all")
    else:  # the second turn becomes the first: its picture lands where the first one was
        _say(session, "Thanks.")
        _say(session, "/forget 2")
    _say(session, f"/image {EXAMPLES / 'chart.png'}")
    encoded_images.clear()
    turn = _say(session, "What is it?")
    assert encoded_images == [1]
    assert turn.result.stats.cached_tokens < turn.result.stats.prompt_tokens - engine.processor.num_image_tokens
    assert turn.result.token_ids == engine.run(_without_last(session), session.generation).token_ids


def test_system_and_clear_restart_the_cache_and_match_a_recompute(engine):
    session = _session(engine, [str(EXAMPLES / "shapes.png")])
    _say(session, "Describe the image.")
    second = _say(session, "More detail?")
    assert second.result.stats.cached_tokens > 0

    assert "'Be terse.'" in _say(session, "/system Be terse.").text
    changed = _say(session, "Shorter?").result
    assert changed.stats.cached_tokens <= 1  # the system prompt comes first: only BOS survives
    fresh = engine.run(_without_last(session), session.generation)  # a full recompute
    assert changed.token_ids == fresh.token_ids
    assert _say(session, "Thanks.").result.stats.cached_tokens >= changed.stats.prompt_tokens

    assert "new conversation" in _say(session, "/clear").text
    assert session.cache.kv is None and session.conversation.messages == []
    assert session.conversation.system == "Be terse."  # same settings
    cleared = _say(session, "Hello?").result
    assert cleared.stats.cached_tokens == 0
    assert cleared.token_ids == engine.run(_without_last(session), session.generation).token_ids


def _without_last(session):
    conversation = session.conversation.copy()
    del conversation.messages[-1]
    return conversation


def test_save_then_load_gives_the_same_next_answer(engine, tmp_path):
    live = _session(engine, [str(EXAMPLES / "shapes.png")])
    _say(live, "Describe the image.")
    _say(live, f"/image {EXAMPLES / 'chart.png'}")
    _say(live, "And this one?")
    saved = _say(live, f"/save {tmp_path / 'chat.json'}")
    assert "saved 2 exchanges" in saved.text and "/load restores it" in saved.text
    assert "Markdown transcript" in _say(live, f"/save {tmp_path / 'chat.md'}").text
    transcript = (tmp_path / "chat.md").read_text()
    assert "## User" in transcript and "Describe the image." in transcript and "chart.png" in transcript
    expected = _say(live, "What changed?").result

    restored = _session(engine)
    _say(restored, "Something else entirely.")  # its cache must not leak into the loaded conversation
    assert "loaded 2 exchanges" in _say(restored, f"/load {tmp_path / 'chat.json'}").text
    assert restored.cache.kv is None
    got = _say(restored, "What changed?").result
    assert got.token_ids == expected.token_ids
    assert got.stats.cached_tokens == 0
    assert _say(restored, f"/load {tmp_path / 'chat.md'}").code == 2  # a transcript is not loadable


def test_save_never_replaces_a_file_unasked_and_writes_atomically(engine, tmp_path, monkeypatch):
    import os

    session = _session(engine)
    _say(session, "Describe it.")
    existing = tmp_path / "notes.json"
    existing.write_text("precious\n")
    refused = _say(session, f"/save {existing}")
    assert refused.code == 2 and "/save! " in refused.text and refused.confirm == f"/save! {existing}"
    assert existing.read_text() == "precious\n"

    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not mine\n")
    link = tmp_path / "link.json"
    link.symlink_to(elsewhere)
    assert _say(session, f"/save {link}").code == 2  # a symlink is an existing file too
    assert _say(session, f"/save! {link}").code == 0
    assert elsewhere.read_text() == "not mine\n" and not link.is_symlink()  # the link was replaced, not followed

    existing.chmod(0o640)
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk)
        failed = _say(session, f"/save! {existing}")
    assert failed.code == 2 and "No space left" in failed.text
    assert existing.read_text() == "precious\n"  # the old file is whole
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left
    assert _say(session, f"/save! {existing}").code == 0
    assert json.loads(existing.read_text())["messages"][0]["text"] == "Describe it."
    assert existing.stat().st_mode & 0o777 == 0o640  # the file keeps its permissions


@pytest.mark.parametrize("payload,words", [
    ({"messages": ["x"]}, "message 1 is not an object"),
    ({"messages": [{"role": "user", "text": "hi", "images": [123]}]}, "images must be a list"),
    ({"system": 123, "messages": []}, "system must be text"),
    ({"messages": [{"role": "robot", "text": "hi"}]}, "role must be user or assistant"),
    ({"messages": {"role": "user"}}, "messages must be a list"),
    ({"messages": [{"role": "assistant", "text": "<image_placeholder>"}]}, "reserved token"),
])
def test_load_of_a_malformed_file_is_one_line_and_the_session_goes_on(engine, tmp_path, payload, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "dsvl-conversation/1", **payload}))
    session = _session(engine)
    _say(session, "First question.")
    reply = _say(session, f"/load {path}")
    assert reply.code == 2 and words in reply.text and str(path) in reply.text and "\n" not in reply.text
    assert len(session.conversation.messages) == 2  # the session was kept as it was
    assert _say(session, "And now?").result.finish_reason in ("stop", "length")


def test_pipe_save_over_a_file_fails_and_save_bang_replaces_it(cli, tmp_path):
    target = tmp_path / "chat.json"
    target.write_text("keep me\n")
    result = cli(["chat", "-m", "tiny-random", "-n", "3"], input=f"Hi.\n/save {target}\n")
    assert result.exit_code == 2 and "/save!" in result.stderr and target.read_text() == "keep me\n"
    result = cli(["chat", "-m", "tiny-random", "-n", "3"], input=f"Hi.\n/save! {target}\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(target.read_text())["format"] == "dsvl-conversation/1"


def test_set_changes_every_generation_option(engine):
    session = _session(engine)
    for line, key, value in [("/set max_new_tokens 3", "max_new_tokens", 3), ("/set temperature 0.7", "temperature", 0.7),
                             ("/set top_p 0.9", "top_p", 0.9), ("/set top_k 5", "top_k", 5),
                             ("/set repetition_penalty 1.2", "repetition_penalty", 1.2), ("/set seed 7", "seed", 7),
                             ("/set --top-k none", "top_k", None), ("/set t 0", "temperature", 0.0),
                             ("/set n 4", "max_new_tokens", 4)]:
        reply = _say(session, line)
        assert not reply.error, reply.text
        assert getattr(session.generation, key) == value
    listing = _say(session, "/set").text
    assert "max_new_tokens = 4" in listing and "seed = 7" in listing and "system = (the model default)" in listing
    _say(session, "/set system Be brief.")
    assert session.conversation.system == session.generation.system == "Be brief."
    for bad, words in [("/set top_p 2", "/set top_p 2: must be in (0, 1]"), ("/set top_k x", "not an integer"),
                       ("/set colour red", "not a generation option"), ("/set seed", "usage")]:
        reply = _say(session, bad)
        assert reply.code == 2 and words in reply.text
    assert _say(session, "Go.").result.stats.generated_tokens == 4


def test_context_overflow_says_so_and_forget_makes_room(engine, monkeypatch):
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.errors import ContextLengthError

    session = _session(engine, [str(EXAMPLES / "shapes.png")])
    _say(session, "Describe the image.")
    limit = engine.encode(_question("More?")).input_ids.shape[1] + 2  # the question alone fits
    monkeypatch.setattr(LocalEngine, "context_length", property(lambda self: limit))
    before = session.conversation.copy()
    with pytest.raises(ContextLengthError) as caught:
        _say(session, "More?")
    message = caught.value.message
    assert f"past the model's context length of {limit}; it was not sent" in message
    assert "/forget 1 drops the oldest 1 exchange so it fits" in message and "/clear" in message
    assert session.conversation.template_messages() == before.template_messages()  # nothing lost, nothing half-added

    assert "forgot the oldest 1 exchange" in _say(session, "/forget").text
    turn = _say(session, "More?")
    assert turn.result.stats.generated_tokens == 2 and session.at_context_end(turn)  # room for 2 only
    assert len(session.conversation.messages) == 2


def test_answer_cut_at_the_context_end_is_flagged(engine, monkeypatch):
    from dsvl_cli.engine.local import LocalEngine

    session = _session(engine)
    prompt_tokens = engine.encode(_question("Hi.")).input_ids.shape[1]
    monkeypatch.setattr(LocalEngine, "context_length", property(lambda self: prompt_tokens + 3))
    turn = _say(session, "Hi.")
    assert turn.result.stats.generated_tokens == 3 and turn.result.finish_reason == "length"
    assert session.at_context_end(turn)


def _question(text):
    from dsvl_cli.conversation import Conversation

    return Conversation.single(text)


def test_bad_question_and_image_leave_the_session_as_it_was(engine):
    session = _session(engine)
    reply = _say(session, "/image nope.png")
    assert reply.code == 2 and "nope.png" in reply.text and session.pending == []
    reply = _say(session, "what is <image_placeholder>?")
    assert reply.code == 2 and session.conversation.messages == []
    assert _say(session, "//etc is a folder?").prompt == "/etc is a folder?"


def test_worst_exit_code():
    from dsvl_cli.chat.ui import worst

    assert worst(0, 0) == 0
    assert worst(0, 2) == 2
    assert worst(2, 1, 2) == 1
    assert worst(1, 130, 2) == 130


# -- pipes through the CLI -----------------------------------------------------------------------
def test_pipe_json_one_object_per_turn_and_bad_inputs_exit_2(cli):
    script = ("What is this?\n/bogus\n/image nope.png\n\"\"\"And the\ncolours?\"\"\"\n/undo\n/retry\n")
    result = cli(["chat", str(EXAMPLES / "shapes.png"), "-m", "tiny-random", "-n", "6", "--json"], input=script)
    assert result.exit_code == 2, result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2, 1]  # /undo then /retry answers turn 1 again
    assert set(turns[0]) == {"turn", "prompt", "images", "answer", "finish_reason", "stats", "model"}
    assert turns[0]["images"] == [str(EXAMPLES / "shapes.png")] and turns[1]["images"] == []
    assert turns[1]["prompt"] == "And the\ncolours?"
    assert turns[0]["stats"]["cached_tokens"] == 0 < turns[1]["stats"]["cached_tokens"]
    assert turns[2]["answer"] == turns[0]["answer"]
    assert turns[2]["stats"]["cached_tokens"] == turns[2]["stats"]["prompt_tokens"] - 1
    assert "unknown command /bogus" in result.stderr and "image nope.png: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_pipe_plain_answers_exit_0(cli, tmp_path):
    script = f"Hi.\n/stats\n/save {tmp_path / 'chat.md'}\nBye.\n/exit\nNever asked.\n"
    result = cli(["chat", "-m", "tiny-random", "-n", "5"], input=script)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # one plain answer per turn; nothing after /exit
    assert "cached" in result.stderr and "session: 1 answers" in result.stderr
    assert "Never asked." not in result.stdout and "Bye." not in (tmp_path / "chat.md").read_text()


def test_pipe_context_overflow_goes_on_and_exits_2(cli, monkeypatch):
    from dsvl_cli.engine.local import LocalEngine

    monkeypatch.setattr(LocalEngine, "context_length", property(lambda self: 30))
    script = "Hi.\nTell me more about it?\n/clear\nHi.\n"  # 11, 22 alone, 30+ after Hi.
    result = cli(["chat", "-m", "tiny-random", "-n", "4", "--json", "--system", ""], input=script)
    assert result.exit_code == 2
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["finish_reason"] for t in turns] == ["length", "error", "length"]
    assert turns[1]["error"]["kind"] == "context_length"
    assert "past the model's context length of 30" in result.stderr and "/forget 1" in result.stderr


def test_pipe_runtime_failure_outranks_bad_input(cli, monkeypatch):
    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.errors import GenerationError

    calls = []
    original = LocalEngine.stream

    def failing_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise GenerationError("out of memory on cpu while generating")
        yield from original(self, *args, **kwargs)

    monkeypatch.setattr(LocalEngine, "stream", failing_once)
    result = cli(["chat", "-m", "tiny-random", "-n", "3"], input="Hi.\n/nope\nHi again.\n")
    assert result.exit_code == 1
    assert "out of memory" in result.stderr and len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("source,words", [("nope.png", "no such file"), ("-", "stdin carries the conversation")])
def test_bad_image_on_the_command_line_exits_2_before_loading(cli, source, words):
    result = cli(["chat", source, "-m", "no-such/model"], input="Hi.\n")
    assert result.exit_code == 2
    assert words in result.stderr and "Traceback" not in result.stderr


# -- the terminal --------------------------------------------------------------------------------
def test_repl_on_a_pty_interrupt_then_answer_history(tiny_folder, isolated_home, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env.update(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", HOME=str(isolated_home))
    child = pexpect.spawn(sys.executable, ["-m", "dsvl_cli", "chat", "-m", "tiny-random", "-n", "3000", "--stats"],
                          env=env, cwd=str(REPO), encoding="utf-8", timeout=60, dimensions=(30, 100))

    def prompt():
        # prompt_toolkit turns bracketed paste on once it holds the terminal in raw mode, then
        # draws the prompt: typing before that would be echoed by the cooked tty, not read.
        child.expect_exact("\x1b[?2004h")
        child.expect(">>>")

    try:
        prompt()
        child.sendline("Describe it.")  # a long greedy answer (hundreds of tokens on tiny-random)
        child.expect_exact("\x1b[?2004l")  # prompt_toolkit let go of the terminal: the answer starts
        child.expect(r"^(?:\x1b\[[0-9;?]*[A-Za-z]|\s)*[^\x1b\s]")  # its first visible character
        child.sendintr()  # while it streams
        child.expect(r"\(interrupted")
        prompt()
        child.send("half a line")
        child.sendintr()  # at the prompt: clears the line
        prompt()
        child.send("/ima\t")  # completes to /image or /images: shows the menu
        child.expect("/images")
        child.send("\x15")  # Ctrl-U
        child.sendline("/set n 4")
        child.expect("max_new_tokens = 4")
        prompt()
        child.send(f"/image {EXAMPLES / 'sha'}\t")
        child.expect("pes.png")  # the completion fills in the rest of the name
        child.send("\r")
        child.expect("attached")
        prompt()
        child.send("What is\x1b\rthis?\r")  # Alt-Enter: a new line in the same question
        child.expect("generated")
        prompt()
        child.sendline(f"/save {tmp_path / 'chat.json'}")
        child.expect("saved")
        prompt()
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    saved = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[1]["finish_reason"] == "interrupted" and saved[1]["text"]  # the partial answer is kept
    assert saved[2]["text"] == "What is\nthis?" and saved[2]["images"] == [str(EXAMPLES / "shapes.png")]
    assert saved[3]["finish_reason"] == "length"
    history = isolated_home / ".local" / "state" / "dsvl" / "chat_history"
    assert "+Describe it." in history.read_text() and "half a line" not in history.read_text()
    assert (history.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("answer", [True, False])
def test_a_terminal_asks_before_save_replaces_a_file(engine, tmp_path, answer):
    """On a terminal the front end asks (ChatUI.ask, set by the REPL) instead of failing."""
    import io

    from dsvl_cli.chat.ui import ChatUI
    from dsvl_cli.screen.environment import Environment
    from dsvl_cli.options import build_common

    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO())
    ui = ChatUI(_session(engine), build_common({}, env=env))
    questions = []
    ui.ask = lambda question: questions.append(question) or answer
    target = tmp_path / "chat.json"
    target.write_text("old\n")
    ui.submit("Hi.")
    ui.submit(f"/save {target}")
    assert len(questions) == 1 and str(target) in questions[0] and "[y/N]" in questions[0]
    assert (target.read_text() != "old\n") is answer
    assert ui.exit_code == 0  # a question answered "no" is not a failure
