"""Usage errors and the checks that run before any model loads (issue 16: #3, #8, #9, #10, #12)."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES, run_dsvl


@pytest.mark.parametrize("args,flag", [
    (["-t", "nan"], "--temperature"), (["-t", "inf"], "--temperature"), (["-t", "1e999"], "--temperature"),
    (["--repetition-penalty", "nan"], "--repetition-penalty"), (["--top-p", "nan"], "--top-p"),
    (["--server", "http://127.0.0.1:9", "-t", "inf"], "--temperature"),
])
def test_non_finite_settings_exit_2_naming_the_option(cli, args, flag):
    result = cli(["ask", "hi", "-m", "tiny-random", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"dsvl: error: {flag} ") and "finite" in result.stderr, result.stderr


def test_chat_set_nan_is_refused_and_the_chat_goes_on(cli):
    script = "/set temperature nan\n/set repetition_penalty inf\nHi.\n"
    result = cli(["chat", "-m", "tiny-random", "-n", "3", "--json"], input=script)
    assert result.exit_code == 2
    assert "/set temperature nan: must be a finite number" in result.stderr
    assert "/set repetition_penalty inf" in result.stderr
    assert [json.loads(line)["finish_reason"] for line in result.stdout.splitlines()] == ["length"]


@pytest.mark.parametrize("args,line", [
    (["ask", "--frobnicate", "hi"], "dsvl: error: no such option --frobnicate (see dsvl ask --help)"),
    (["chat", "--jsn"], "dsvl: error: no such option --jsn (did you mean --json?) (see dsvl chat --help)"),
    (["ask", "-n", "lots", "hi"], "dsvl: error: invalid value for '-n'"),
    (["nope"], "dsvl: error: no such command 'nope' (see dsvl --help)"),
])
def test_usage_errors_are_one_line_exit_2(cli, args, line):
    result = cli(args)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr
    assert "Usage:" not in result.output and "Try " not in result.output


def test_usage_error_in_a_real_process_is_one_line():
    result = run_dsvl(["ask", "--frobnicate"])
    assert result.returncode == 2
    assert result.stderr.decode() == "dsvl: error: no such option --frobnicate (see dsvl ask --help)\n"


@pytest.mark.parametrize("args", [[str(EXAMPLES / "shapes.png")], [str(EXAMPLES / "shapes.png"), ""],
                                  ["https://example.com/cat.jpg"], ["-"]])
def test_a_forgotten_question_exits_2(cli, args):
    result = cli(["ask", *args, "-m", "no-such/model"])
    assert result.exit_code == 2
    assert "no question: the last argument is " in result.stderr


def test_revision_with_a_model_built_here_is_refused(cli):
    result = cli(["ask", "hi", "-m", "tiny-random", "--revision", "nope"])
    assert result.exit_code == 2 and "--revision nope" in result.stderr


def test_random_model_names_match_the_builder():
    from dsvl_cli.models import tiny_random
    from dsvl_cli.settings import RANDOM_MODELS

    assert set(RANDOM_MODELS) == set(tiny_random.SPECS)


def test_ask_past_the_context_gives_ask_advice(cli):
    result = cli(["ask", "word " * 5000, "-m", "tiny-random"])
    assert result.exit_code == 2
    assert "shorten the prompt" in result.stderr and "-n" in result.stderr and "/clear" not in result.stderr


def test_an_answer_cut_by_the_context_says_so_with_figures(cli, engine, monkeypatch):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.engine.local import LocalEngine

    prompt_tokens = engine.count_tokens(Conversation.single("Hi."))
    monkeypatch.setattr(LocalEngine, "context_length", property(lambda self: prompt_tokens + 3))
    result = cli(["ask", "Hi.", "-m", "tiny-random", "-n", "50", "--plain"])
    assert result.exit_code == 0, result.stderr
    assert (f"context length of {prompt_tokens + 3} tokens: the prompt took {prompt_tokens}, leaving room for 3 "
            "of the 50 new tokens asked (-n)") in result.stderr
    chat = cli(["chat", "-m", "tiny-random", "-n", "50"], input="Hi.\n")
    assert "leaving room for 3 of the 50" in chat.stderr and "/forget" in chat.stderr


# -- one source for aliases, environment variables and exit codes --------------------------------
def test_help_and_readme_name_the_same_aliases_variables_and_exit_codes(cli):
    from conftest import REPO
    from dsvl_cli import catalog

    readme = (REPO / "README.md").read_text()
    ask_help = cli(["ask", "--help"]).stdout
    for alias in catalog.alias_names():
        assert f"`{alias}`" in readme and alias in ask_help, alias
    for name in catalog.ENVIRONMENT:
        assert f"`{name}`" in readme, name
        for command in ("ask", "chat", "batch", "serve"):
            assert name in cli([command, "--help"]).stdout, (command, name)
    for code in catalog.EXIT_CODES:
        assert f"| {code} |" in readme and f"  {code} " in ask_help, code
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
    import tomllib

    floor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"].removeprefix(">=")
    assert f"Python >= {floor}" in readme and "venv" in readme  # the floor pyproject declares (and CI tests)


def test_top_level_help_is_not_cut_and_chat_takes_several_images(cli):
    top = cli(["--help"]).stdout
    assert "..." not in top.split("Commands:")[1]
    assert "[IMAGE]..." in cli(["chat", "--help"]).stdout
