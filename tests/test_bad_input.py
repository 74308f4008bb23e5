"""Issue 29: bad input never ends a job. Pathological JSON (deep nesting, huge integers, NaN, invalid
UTF-8) is one error where it was given: a batch error record, a 400 from serve, one line for a file;
--api-key alone is refused; the config file keeps a secret private and never prints it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from test_serve_hardening import served  # noqa: F401  (the fixture: a served FakeEngine)
from test_serve import _post
from test_serve_security import USER, _error

DEEP = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
HUGE = '{"id": "huge", "prompt": "Hi", "max_new_tokens": ' + "1" * 5000 + "}"


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ('{"a": ' + "9" * 5000 + "}", "5000 digits"),
    ("[NaN]", "finite"), ("[-Infinity]", "finite"), ("[1e999]", "finite"),
    (b'{"a": "\xff"}', "UTF-8"), ('{"a": "\\udc80"}', "UTF-8"),
])
def test_load_json_refuses_with_a_json_error(text, words):
    from dsvl_cli.errors import load_json

    with pytest.raises(json.JSONDecodeError) as caught:
        load_json(text)
    assert words in caught.value.msg


def test_load_json_keeps_what_is_fine():
    from dsvl_cli.errors import JSON_MAX_DEPTH, load_json

    ok = '{"s": "[[[[{{{ \\" NaN", "n": [' + "[" * (JSON_MAX_DEPTH - 2) + "]" * (JSON_MAX_DEPTH - 2) + \
         '], "big": ' + "9" * 30 + ', "emoji": "\\ud83d\\ude00", "f": -1.5e3}'
    value = load_json(ok)
    assert value["s"] == '[[[[{{{ " NaN' and value["big"] == int("9" * 30) and value["emoji"] == "\U0001F600"
    assert value["f"] == -1500.0


def test_a_pathological_record_is_one_error_record_and_the_rest_are_answered(cli, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(['{"id": "a", "prompt": "Hi"}', DEEP, HUGE, '{"id": "nan", "prompt": "Hi", '
                               '"temperature": NaN}', '{"id": "z", "prompt": "Bye"}']) + "\n")
    out = tmp_path / "out.jsonl"
    result = cli(["batch", str(jobs), "-o", str(out), "-m", "tiny-random", "-n", "2"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = {r["line"]: r["error"]["type"] for r in records if "error" in r}
    assert errors == {2: "invalid_json", 3: "invalid_json", 4: "invalid_json"}
    assert sorted(r["id"] for r in records if "answer" in r) == ["a", "z"]
    assert "5000 digits" in next(r for r in records if r["line"] == 3)["error"]["message"]
    again = cli(["batch", str(jobs), "-o", str(out), "--resume", "-m", "tiny-random", "-n", "2"])
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert len(out.read_text().splitlines()) == 5  # nothing lost, nothing written twice


def test_invalid_utf8_on_stdin_spoils_only_its_own_record(tiny_folder, tmp_path):
    from conftest import run_dsvl

    data = b'{"id": "a", "prompt": "Hi"}\n{"id": "b", "prompt": "\xff\xfe"}\n{"id": "c", "prompt": "Yo"}\n'
    proc = run_dsvl(["batch", "-m", "tiny-random", "-n", "2"], input=data)
    assert b"Traceback" not in proc.stderr and b"internal error" not in proc.stderr, proc.stderr
    ids = [json.loads(line)["id"] for line in proc.stdout.decode().splitlines()]
    assert sorted(ids) == ["a", "b", "c"]  # a bad byte is replaced, as in a file; the run goes on


def test_serve_answers_a_huge_integer_with_a_400_not_a_500(served):  # noqa: F811
    body = '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": ' + "1" * 5000 + "}"
    error = _error(_post(served, body, key=None), 400)
    assert error["type"] == "invalid_request_error" and "digits" in error["message"]
    for raw in ('{"messages": [{"role": "user", "content": "\\ud800"}]}', b'{"messages": "\xff"}'):
        assert _error(_post(served, raw, key=None), 400)["type"] == "invalid_request_error"
    assert _post(served, {"messages": USER}, key=None).status_code == 200


@pytest.mark.parametrize("text", ["[" * 50_000 + "]" * 50_000, '{"type": "integer", "maximum": ' + "7" * 5000 + "}"])
def test_a_pathological_schema_file_is_one_line_and_exit_2(cli, tmp_path, text):
    schema = tmp_path / "schema.json"
    schema.write_text(text)
    result = cli(["ask", "Hi", "--schema", str(schema), "-m", "tiny-random"])
    assert result.exit_code == 2, result.output
    assert "--schema" in result.stderr and "not JSON" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_deep_saved_chat_and_a_deep_config_are_one_line(cli, tmp_path):
    from dsvl_cli.conversation import Conversation
    from dsvl_cli.errors import UsageError
    from dsvl_cli.setup import config

    saved = tmp_path / "chat.json"
    saved.write_text('{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(UsageError, match="nested"):
        Conversation.load(saved)
    config.path().parent.mkdir(parents=True, exist_ok=True)
    config.path().write_text("max_new_tokens = " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = cli(["config", "show"])
    assert result.exit_code == 2 and "nested" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("command", [["ask", "Hi"], ["chat"], ["batch"]])
def test_api_key_without_server_is_a_usage_error(cli, command):
    result = cli([*command, "--api-key", "K", "-m", "tiny-random"], input="")
    assert result.exit_code == 2, result.output
    assert "--server" in result.stderr and "K" not in result.stderr.replace("--api-key", "")


def test_api_key_from_the_environment_does_not_need_a_server(cli):
    result = cli(["ask", "Hi", "-m", "tiny-random", "-n", "1"], env={"DSVL_API_KEY": "K"})
    assert result.exit_code == 0, result.output


def test_config_set_api_key_is_private_and_never_echoed(cli):
    from dsvl_cli.setup import config

    result = cli(["config", "set", "api_key", "s3cret-value"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "(set)" in result.stderr
    assert stat.S_IMODE(config.path().stat().st_mode) == 0o600
    assert config.load()["api_key"] == "s3cret-value"


def test_config_set_api_key_reads_stdin_and_tightens_an_open_file(cli):
    from dsvl_cli.setup import config

    config.path().parent.mkdir(parents=True, exist_ok=True)
    config.path().write_text("max_new_tokens = 64\n")
    os.chmod(config.path(), 0o644)
    result = cli(["config", "set", "api_key"], input="from-stdin-key\n")
    assert result.exit_code == 0, result.output
    assert "from-stdin-key" not in result.output
    assert config.load() == {"max_new_tokens": 64, "api_key": "from-stdin-key"}
    assert stat.S_IMODE(config.path().stat().st_mode) == 0o600
    assert cli(["config", "set", "api_key"], input="").exit_code == 2


# -- #5: --server sees the pictures a local run sees ------------------------------------------------

@pytest.mark.parametrize("alias, folder_fixture", [("tiny-random-1.3b", "tiny13_folder"),
                                                   ("tiny-random", "tiny_folder")])
def test_ask_server_answers_as_a_local_run_for_a_picture_between_1024_px_and_4_mp(cli, tmp_path, request,
                                                                                   alias, folder_fixture):
    import numpy
    from PIL import Image

    from dsvl_cli.engine.local import LocalEngine
    from dsvl_cli.serve.app import create_app
    from dsvl_cli.settings import ModelSettings
    from test_serve import _start

    request.getfixturevalue(folder_fixture)
    ramp = numpy.add.outer(numpy.arange(1500), numpy.arange(2000)) % 256  # a photo-like PNG of a few MB
    noise = numpy.random.default_rng(29).integers(0, 16, (1500, 2000, 3))
    rows = ((ramp[..., None] + noise) % 256).astype(numpy.uint8)
    picture = tmp_path / "wide.png"
    Image.fromarray(rows).save(picture, compress_level=1)  # 3 MP: the exact path of a local run
    assert picture.stat().st_size < 8 << 20  # under dsvl serve's cap: sent as it is
    ask = ["ask", str(picture), "What is this?", "-n", "6", "--json", "--logprobs", "2"]
    local = json.loads(cli([*ask, "-m", alias]).stdout)
    url, stop = _start(create_app(LocalEngine.load(ModelSettings(model=alias, device="cpu"))))
    try:
        remote = cli([*ask, "--server", url])
    finally:
        stop()
    assert remote.exit_code == 0, remote.output
    remote = json.loads(remote.stdout)
    assert remote["answer"] == local["answer"]
    first_local, first_remote = local["logprobs"]["content"][0], remote["logprobs"]["content"][0]
    assert first_remote["token"] == first_local["token"]
    assert abs(first_remote["logprob"] - first_local["logprob"]) < 1e-4, (first_local, first_remote)
