"""The config file: precedence flag > DSVL_* > config file > built-in for each level, `dsvl config
show|path|set|unset`, and one line naming file, line and key for a broken file (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsvl_cli.commands import ask as ask_command


@pytest.fixture
def seen(monkeypatch):
    """The CommonOptions `dsvl ask` would answer with (the model is never loaded)."""
    got = []

    def capture(sources, prompt, opts, thread=None, **_):
        got.append(opts)
        return "stop"

    monkeypatch.setattr(ask_command, "_answer", capture)
    return got


def config_file(home: Path) -> Path:
    return home / ".config" / "dsvl" / "config.toml"


def write_config(home: Path, text: str) -> Path:
    path = config_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_each_level_of_precedence(cli, seen, isolated_home, monkeypatch):
    assert cli(["ask", "Hi?"]).exit_code == 0
    assert seen[-1].generation.max_new_tokens == 512 and seen[-1].model.model.endswith("deepseek-vl-7b-chat")
    assert seen[-1].requested_model is None and seen[-1].keep_alive == 0

    write_config(isolated_home, '# my defaults\nmodel = "tiny-random"\nmax_new_tokens = 3\nkeep_alive = "5m"\n'
                                'temperature = 1\ndevice = "cpu"\n')
    assert cli(["ask", "Hi?"]).exit_code == 0
    opts = seen[-1]
    assert opts.generation.max_new_tokens == 3 and opts.model.model == "tiny-random"
    assert opts.requested_model == "tiny-random" and opts.keep_alive == 300 and opts.model.device == "cpu"
    assert opts.generation.temperature == 1.0

    monkeypatch.setenv("DSVL_MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("DSVL_MODEL", "tiny-random-1.3b")
    assert cli(["ask", "Hi?"]).exit_code == 0
    assert seen[-1].generation.max_new_tokens == 4 and seen[-1].model.model == "tiny-random-1.3b"
    assert seen[-1].model.device == "cpu"  # still the file's: env only replaces what it sets

    assert cli(["ask", "Hi?", "-n", "5", "-m", "1.3b"]).exit_code == 0
    assert seen[-1].generation.max_new_tokens == 5 and seen[-1].model.model == "1.3b"


def test_config_file_shows_as_the_default_in_help(cli, isolated_home):
    write_config(isolated_home, 'max_new_tokens = 77\ndevice = "cuda:1"\n')
    assert "default: 77" in cli(["ask", "--help"]).stdout
    for command in ("ask", "chat", "batch", "serve", "doctor"):  # every command that reads the shared options
        assert "default: cuda:1" in cli([command, "--help"]).stdout, command


@pytest.mark.parametrize("text, where", [
    ('model = "1.3b"\nmax_new_tokens = \n', "line 2: key max_new_tokens: not valid TOML"),
    ('model = "1.3b\n', "line 1: key model: not valid TOML"),
    ('model = "1.3b"\n\ncolour = "red"\n', "line 3: key colour: unknown key"),
    ('[ask]\nmodel = "1.3b"\n', "line 1: key ask: unknown table"),
    ('max_new_tokens = "many"\n', "line 1: key max_new_tokens: expected an integer"),
    ('device = "gpu"\n', "line 1: key device: --device 'gpu'"),
    ('keep_alive = "soon"\n', "line 1: key keep_alive: --keep-alive 'soon'"),
    ('offline = 1\n', "line 1: key offline: expected true or false"),
])
def test_a_broken_config_is_one_line_naming_file_line_and_key(cli, seen, isolated_home, text, where):
    path = write_config(isolated_home, text)
    result = cli(["ask", "Hi?"])
    assert result.exit_code == 2 and not seen
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and f"config file {path}" in line and where in line, line
    assert cli(["config", "path"]).stdout.strip() == str(path)  # `config` still works, to fix it
    assert cli(["config", "show"]).exit_code == 2


def test_set_and_unset_keep_comments_and_check_values(cli, isolated_home, monkeypatch):
    path = write_config(isolated_home, '# chosen with care\nmodel = "1.3b"  # the small one\n\n# sampling\n')
    assert cli(["config", "set", "max-new-tokens", "256"]).exit_code == 0
    assert cli(["config", "set", "model", "tiny-random"]).exit_code == 0
    assert cli(["config", "set", "offline", "yes"]).exit_code == 0
    assert cli(["config", "set", "system", 'Say "hi"\nthen stop.']).exit_code == 0
    text = path.read_text()
    assert text.startswith("# chosen with care\nmodel = \"tiny-random\"\n\n# sampling\n")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as a package
        import tomli as tomllib

    assert tomllib.loads(text) == {"model": "tiny-random", "max_new_tokens": 256, "offline": True,
                                   "system": 'Say "hi"\nthen stop.'}
    bad = cli(["config", "set", "temperature", "hot"])
    assert bad.exit_code == 2 and "temperature" in bad.stderr and "not a number" in bad.stderr
    bad = cli(["config", "set", "top_p", "7"])
    assert bad.exit_code == 2 and "--top-p 7.0" in bad.stderr
    assert cli(["config", "set", "colour", "red"]).exit_code == 2
    assert "max_new_tokens" in path.read_text()

    assert cli(["config", "unset", "max_new_tokens"]).exit_code == 0
    assert "max_new_tokens" not in path.read_text() and "# sampling" in path.read_text()
    again = cli(["config", "unset", "max_new_tokens"])
    assert again.exit_code == 0 and "was not set" in again.stderr

    assert cli(["config", "unset", "system"]).exit_code == 0
    path.write_text(path.read_text() + 'system = """Be brief.\nVery brief."""\n')
    refused = cli(["config", "set", "system", "Be long."])
    assert refused.exit_code == 2 and "key system spans several lines" in refused.stderr
    assert 'Very brief."""' in path.read_text()

    monkeypatch.setenv("DSVL_TEMPERATURE", "0.5")
    shown = json.loads(cli(["config", "show", "--json"]).stdout)
    sources = {row["key"]: (row["value"], row["source"]) for row in shown["settings"]}
    assert sources["model"] == ("tiny-random", "config file")
    assert sources["temperature"] == ("0.5", "environment")
    assert sources["max_new_tokens"] == (512, "default")
    assert shown["path"] == str(path)


def test_comments_and_layout_survive_set_and_unset(cli, isolated_home):
    text = ('# my defaults\n\nmodel = "tiny-random"  # the one for tests\n\n'
            '# sampling, tuned by hand\ntemperature = 0.7\n# end\n')
    path = write_config(isolated_home, text)
    assert cli(["config", "set", "temperature", "0.2"]).exit_code == 0
    assert cli(["config", "set", "seed", "7"]).exit_code == 0
    assert path.read_text() == text.replace("0.7", "0.2") + "seed = 7\n"
    assert cli(["config", "unset", "seed"]).exit_code == 0
    assert cli(["config", "unset", "temperature"]).exit_code == 0
    assert path.read_text() == ('# my defaults\n\nmodel = "tiny-random"  # the one for tests\n\n'
                                '# sampling, tuned by hand\n# end\n')


def test_the_config_path_follows_dsvl_config_and_xdg(cli, isolated_home, tmp_path, monkeypatch):
    assert cli(["config", "path"]).stdout.strip() == str(config_file(isolated_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cli(["config", "path"]).stdout.strip() == str(tmp_path / "xdg" / "dsvl" / "config.toml")
    monkeypatch.setenv("DSVL_CONFIG", str(tmp_path / "other.toml"))
    assert cli(["config", "set", "dtype", "float32"]).exit_code == 0
    assert (tmp_path / "other.toml").read_text() == 'dtype = "float32"\n'


def test_an_api_key_is_never_shown(cli, isolated_home):
    write_config(isolated_home, 'api_key = "sk-secret"\n')
    shown = cli(["config", "show"]).stdout
    assert "sk-secret" not in shown and "api_key" in shown
