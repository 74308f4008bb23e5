"""`dsvl ask` end to end on tiny-random: prompts, answers, sources, errors, output shapes."""

from __future__ import annotations

import base64
import json
import re

import pytest
from PIL import Image

from conftest import EXAMPLES, load_reference, reference_generate, run_dsvl

ESCAPE = re.compile(r"\x1b\[")


def _loaded(*colours):
    from dsvl_cli.images import LoadedImage

    return [LoadedImage(c, Image.new("RGB", (48, 40), c), 0.0) for c in colours]


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_prompt_ids_equal_processor_chat_template(engine, n_images):
    from dsvl_cli.conversation import Conversation

    images = _loaded("red", "green")[:n_images]
    conversation = Conversation.single("What is in these pictures?", images)
    import torch

    encoded = engine.encode(conversation)
    again = engine.encode(conversation)  # the second time, pixels come from the engine's memo
    content = [{"type": "image", "image": i.image} for i in images]
    content.append({"type": "text", "text": "What is in these pictures?"})
    theirs = engine.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt",
    )
    ours = encoded["input_ids"][0].tolist()
    assert ours == theirs["input_ids"][0].tolist()
    assert ours.count(engine.image_token_id) == n_images * engine.processor.num_image_tokens
    # Every tensor the processor returns (mask, pixels of both towers), identical, memo or not.
    assert set(encoded.keys()) == set(theirs.keys())
    for key in theirs:
        assert torch.equal(encoded[key], theirs[key].to(encoded[key].dtype)), key
        assert torch.equal(again[key], encoded[key]), key


def test_custom_system_prompt_replaces_the_default(engine):
    from dsvl_cli.conversation import Conversation

    text = engine.render(Conversation.single("Hi", system="You are terse."))
    assert text == "You are terse.\n\nUser: Hi\n\nAssistant:"
    assert engine.render(Conversation.single("Hi", system="")) == "User: Hi\n\nAssistant:"


@pytest.mark.parametrize("alias,folder_fixture", [("tiny-random", "tiny_folder"), ("tiny-random-1.3b", "tiny13_folder")])
def test_greedy_answer_equals_plain_generate(cli, request, alias, folder_fixture):
    folder = request.getfixturevalue(folder_fixture)
    model, processor = load_reference(folder)
    image = EXAMPLES / "shapes.png"
    result = cli(["ask", str(image), "Describe this image.", "-m", alias, "-n", "24", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    from dsvl_cli.images import load_image

    ids = reference_generate(model, processor, messages, [load_image(str(image)).image], 24)
    expected = processor.batch_decode([ids], skip_special_tokens=True)[0].lstrip()
    assert got["answer"] == expected
    assert got["stats"]["generated_tokens"] == len(ids)
    assert got["answer"]


def test_json_shape(cli):
    result = cli(["ask", str(EXAMPLES / "sunset.jpg"), "What is this?", "-m", "tiny-random", "-n", "8", "--json"])
    assert result.exit_code == 0
    obj = json.loads(result.stdout)
    assert set(obj) == {"answer", "finish_reason", "stats", "model", "images", "prompt"}
    assert obj["finish_reason"] == "length"
    assert obj["images"] == [str(EXAMPLES / "sunset.jpg")]
    assert obj["prompt"] == "What is this?"
    assert set(obj["stats"]) == {"prompt_tokens", "cached_tokens", "generated_tokens", "image_s", "ttft_s",
                                 "decode_tokens_per_s", "total_s"}
    assert obj["stats"]["generated_tokens"] == 8
    assert "random weights" in result.stderr


def test_plain_output_streams_the_answer_only(cli):
    plain = cli(["ask", str(EXAMPLES / "shapes.png"), "Describe.", "-m", "tiny-random", "-n", "12", "--plain"])
    as_json = cli(["ask", str(EXAMPLES / "shapes.png"), "Describe.", "-m", "tiny-random", "-n", "12", "--json"])
    assert plain.stdout == json.loads(as_json.stdout)["answer"] + "\n"


def test_stats_line_on_stderr(cli):
    result = cli(["ask", "Say something.", "-m", "tiny-random", "-n", "5", "--stats"])
    assert result.exit_code == 0
    assert "5 generated" in result.stderr and "prompt tokens" in result.stderr
    assert "generated" not in result.stdout


def test_every_image_source(cli, tmp_path):
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    import functools
    import threading

    png = (EXAMPLES / "shapes.png").read_bytes()
    spaced = tmp_path / "dir with spaces" / "ünïcode ø.png"
    spaced.parent.mkdir()
    spaced.write_bytes(png)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(EXAMPLES))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/shapes.png"
        data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
        answers = set()
        for source, stdin in [(str(spaced), None), (url, None), (data_uri, None), ("-", png)]:
            result = cli(["ask", source, "Describe.", "-m", "tiny-random", "-n", "10", "--json"], input=stdin)
            assert result.exit_code == 0, (source[:40], result.output)
            answers.add(json.loads(result.stdout)["answer"])
        assert len(answers) == 1, "the same picture from every source gives the same answer"
    finally:
        server.shutdown()


def _bad_inputs(tmp_path):
    text_jpg = tmp_path / "notes.jpg"
    text_jpg.write_text("just some text, not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((EXAMPLES / "sunset.jpg").read_bytes()[:600])
    svg = tmp_path / "logo.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    return [
        (str(tmp_path / "missing.png"), "no such file"),
        (str(tmp_path), "directory"),
        (str(empty), "empty"),
        (str(text_jpg), "not a recognised image"),
        (str(truncated), "truncated"),
        (str(svg), "SVG"),
        ("ftp://example.com/a.png", "scheme"),
        ("data:image/png;base64,!!!notbase64", "data"),
    ]


def test_bad_inputs_exit_2_with_one_line_before_loading_the_model(cli, tmp_path, monkeypatch):
    from dsvl_cli.engine import local as engine_module

    def no_load(*a, **k):
        raise AssertionError("the model must not load for a bad input")

    monkeypatch.setattr(engine_module.LocalEngine, "load", classmethod(no_load))
    for source, reason in _bad_inputs(tmp_path):
        result = cli(["ask", source, "Describe.", "-m", "tiny-random"])
        assert result.exit_code == 2, (source, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert source[:30] in lines[0] and reason.lower() in lines[0].lower(), lines[0]
        assert "Traceback" not in result.output


def test_placeholder_token_in_prompt_is_refused(cli):
    result = cli(["ask", "What is <image_placeholder> here?", "-m", "tiny-random"])
    assert result.exit_code == 2
    assert "<image_placeholder>" in result.stderr


def test_bad_option_values_exit_2(cli):
    for args in (["-t", "-1"], ["--top-p", "1.5"], ["-n", "0"], ["--device", "tpu"], ["--dtype", "int3"]):
        result = cli(["ask", "hi", "-m", "tiny-random", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "dsvl: error:" in result.stderr


def test_model_not_cached_offline_is_a_clear_error(cli):
    result = cli(["ask", "hi", "-m", "nobody/no-such-model", "--offline"])
    assert result.exit_code == 1
    assert "nobody/no-such-model" in result.stderr and "tiny-random" in result.stderr
    for alias, repo in (("7b", "deepseek-vl-7b-chat"), ("1.3b", "deepseek-vl-1.3b-chat")):
        aliased = cli(["ask", "hi", "-m", alias, "--offline"])
        assert aliased.exit_code == 1 and f"deepseek-community/{repo}" in aliased.stderr
    missing = cli(["ask", "hi", "-m", "./no/such/folder"])
    assert missing.exit_code == 2 and "no/such/folder" in missing.stderr


def test_debug_shows_a_traceback(cli, tmp_path):
    result = cli(["ask", str(tmp_path / "missing.png"), "hi", "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_version(cli):
    from dsvl_cli import __version__

    result = cli(["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


# -- real processes: pipes, exit codes, import cost ---------------------------------------------------

def test_piped_output_has_no_escape_codes_and_exit_codes_are_real():
    ok = run_dsvl(["ask", "examples/shapes.png", "Describe this image.", "-m", "tiny-random", "-n", "16"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() and not ESCAPE.search(ok.stdout.decode())
    bad = run_dsvl(["ask", "examples/nope.png", "Describe.", "-m", "tiny-random"])
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == "dsvl: error: image examples/nope.png: no such file"


def test_stdin_image_in_a_real_pipe():
    png = (EXAMPLES / "shapes.png").read_bytes()
    result = run_dsvl(["ask", "-", "Describe.", "-m", "tiny-random", "-n", "6", "--json"], input=png)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == ["-"]


@pytest.mark.parametrize("args", [["--help"], ["ask", "--help"], ["chat", "--help"], ["batch", "--help"],
                                  ["serve", "--help"], ["ps", "--help"], ["stop", "--help"], ["models", "--help"],
                                  ["pull", "--help"], ["rm", "--help"], ["doctor", "--help"], ["config", "--help"],
                                  ["config", "set", "--help"]])
def test_help_imports_neither_torch_nor_transformers(args):
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['dsvl', *sys.argv[1:]]\n"
            "from dsvl_cli.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'PIL', 'requests', 'pydantic', 'prompt_toolkit', 'fastapi') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert "Usage" in result.stdout
    assert "HEAVY []" in result.stderr, result.stderr


def test_ctrl_c_while_streaming_keeps_the_text_and_exits_130():
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "dsvl_cli", "ask", "Tell me a long story.", "-m", "tiny-random",
                             "-n", "3000", "--plain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ.copy())
    try:
        first = proc.stdout.read(20)  # the answer has started streaming
        assert first
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert len(first + rest) < 3000 * 12  # stopped early, and what was printed stays printed
