"""What help, the README and error messages must agree on, written once: model aliases, the
environment variables no option carries, exit codes.

Why: the alias list used to differ between `--help`, the README and the "no such model" error.
`--help` renders these (the -m help, the epilogs), loading.py resolves aliases from them, and a
test checks that the README names the same ones. No imports: `dsvl --help` reads this.
"""

from __future__ import annotations

HUB_ALIASES = {
    "7b": "deepseek-community/deepseek-vl-7b-chat",
    "1.3b": "deepseek-community/deepseek-vl-1.3b-chat",
}
# Built offline on first use into DSVL_HOME (models/tiny_random.py has their shapes): noise answers.
RANDOM_MODELS = {
    "tiny-random": "7B's architecture (SigLIP + SAM), tiny shapes",
    "tiny-random-1.3b": "1.3B's architecture (SigLIP only), tiny shapes",
    "tiny-random-fullres": "the real image sizes (576 image tokens) with tiny layers",
}
ENVIRONMENT = {
    "DSVL_HOME": "models built here, compile caches [~/.cache/dsvl]",
    "DSVL_CONFIG": "the config file [$XDG_CONFIG_HOME/dsvl/config.toml]",
    "DSVL_LOGS": "the log of answers [$XDG_STATE_HOME/dsvl/logs.db]",
    "HF_HUB_CACHE": "downloaded models [$HF_HOME/hub, ~/.cache/huggingface/hub]",
    "DSVL_MAX_IMAGE_BYTES": "largest URL, stdin or data: image, in bytes [50 MiB]",
    "NO_COLOR": "when set: no colour, answers as plain text",
}
EXIT_CODES = {
    0: "success",
    1: "runtime failure: the model did not load, out of memory",
    2: "bad usage or input: option, file, image, too long for the context",
    130: "interrupted (Ctrl-C)",
}


def same_model(name: str) -> frozenset[str]:
    """`name` and the other name of the same hub model (alias <-> hub id), if it has one."""
    names = {name}
    for alias, hub_id in HUB_ALIASES.items():
        if name in (alias, hub_id):
            names.update((alias, hub_id))
    return frozenset(names)


def alias_names() -> list[str]:
    return [*HUB_ALIASES, *RANDOM_MODELS]


def model_help() -> str:
    return (f"Hub id, local folder, or alias: {', '.join(alias_names())} "
            "(tiny-random*: random weights, built offline).")


def epilog(*, exit_codes: bool = True) -> str:
    """The environment (and exit code) section of a command's --help; \\b keeps click from
    re-wrapping the lines."""
    lines = ["\b", "Environment:"]
    lines += [f"  {name:<22}{text}" for name, text in ENVIRONMENT.items()]
    if exit_codes:
        lines += ["", "\b", "Exit codes:"] + [f"  {code:<5}{text}" for code, text in EXIT_CODES.items()]
    return "\n".join(lines)
