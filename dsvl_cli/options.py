"""Shared command-line options, declared once.

`shared_options` adds the model, generation and output options (each with its `DSVL_*` variable)
to a command's signature and hands the command one validated `CommonOptions` instead; a command
lists the ones it has no use for in `exclude`, so its --help shows only what it reads. No torch here.
"""

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from dsvl_cli import catalog
from dsvl_cli.screen.environment import Environment
from dsvl_cli.models.completion import complete_model
from dsvl_cli.errors import UsageError
from dsvl_cli.settings import (
    DEFAULT_MODEL,
    GenerationSettings,
    ModelSettings,
    parse_duration,
)


@dataclass(frozen=True)
class CommonOptions:
    model: ModelSettings
    generation: GenerationSettings
    plain: bool = False
    json: bool = False
    stats: bool = False
    exact_pixels: bool = False  # --exact-pixels: full decode of every image (images/decode.py)
    debug: bool = False
    server: str | None = None  # --server: a running `dsvl serve` does the work (engine/remote.py)
    api_key: str | None = None
    keep_alive: float = 0.0  # --keep-alive seconds: >0 keeps the model warm in a private server (keepalive/registry.py)
    env: Environment | None = None  # the process's streams, read when the command starts
    requested_model: str | None = None  # -m/DSVL_MODEL as given; None: not given (--server sends "default")


def _opt(*decls: str, env: str, help: str, **kw) -> typer.models.OptionInfo:
    return typer.Option(*decls, envvar=env, help=help, show_envvar=True, **kw)


# name -> (annotation, default); the order is the order in --help.
SHARED: dict[str, tuple] = {
    "model": (Annotated[str, _opt("-m", "--model", env="DSVL_MODEL",
              help=catalog.model_help(), show_default=DEFAULT_MODEL, autocompletion=complete_model)], None),
    "revision": (Annotated[Optional[str], _opt("--revision", env="DSVL_REVISION",
                 help="Hub branch, tag or commit.")], None),
    "device": (Annotated[str, _opt("--device", env="DSVL_DEVICE",
               help="auto, cpu, cuda, cuda:N or mps.")], "auto"),
    "dtype": (Annotated[str, _opt("--dtype", env="DSVL_DTYPE",
              help="auto (bf16 on CUDA, fp16 on MPS, fp32 on CPU), bfloat16, float16 or float32.")], "auto"),
    "offline": (Annotated[bool, _opt("--offline", env="DSVL_OFFLINE",
                help="Never touch the network for models; use the local cache only.")], False),
    "compile": (Annotated[Optional[bool], _opt("--compile/--no-compile", env="DSVL_COMPILE",
                help="Static KV cache + torch.compile decode (default: on for chat and batch on CUDA; "
                "off on CPU, where the first compile takes ~30 s).")], None),
    "quantize": (Annotated[Optional[str], _opt("--quantize", env="DSVL_QUANTIZE",
                 help="Weight-only int8 or int4 with torchao: CUDA only, needs torchao "
                 "(pip install 'dsvl-cli[quantize]'); exit 2 where it cannot run.")], None),
    "max_new_tokens": (Annotated[int, _opt("-n", "--max-new-tokens", env="DSVL_MAX_NEW_TOKENS",
                       help="Most tokens to generate.")], 512),
    "temperature": (Annotated[float, _opt("-t", "--temperature", env="DSVL_TEMPERATURE",
                    help="0 means greedy (deterministic).")], 0.0),
    "top_p": (Annotated[Optional[float], _opt("--top-p", env="DSVL_TOP_P",
              help="Nucleus sampling (with --temperature > 0).")], None),
    "top_k": (Annotated[Optional[int], _opt("--top-k", env="DSVL_TOP_K",
              help="Top-k sampling (with --temperature > 0).")], None),
    "repetition_penalty": (Annotated[Optional[float], _opt("--repetition-penalty", env="DSVL_REPETITION_PENALTY", help="Penalise repeated tokens (1.0 = off).")], None),
    "seed": (Annotated[Optional[int], _opt("--seed", env="DSVL_SEED",
             help="Random seed for sampling.")], None),
    "system": (Annotated[Optional[str], _opt("-s", "--system", env="DSVL_SYSTEM",
               help="System prompt (replaces DeepSeek-VL's default one).")], None),
    "schema": (Annotated[Optional[str], _opt("--schema", env="DSVL_SCHEMA", metavar="SCHEMA",
               help="Answer JSON valid against this JSON Schema (a file, inline JSON, or the short form "
               "'name, count int, note: what it says'); decoding is constrained, so it always parses.")], None),
    "regex": (Annotated[Optional[str], _opt("--regex", env="DSVL_REGEX", metavar="PATTERN",
              help="Answer text matching this regular expression (constrained decoding).")], None),
    "choices": (Annotated[Optional[str], _opt("--choices", env="DSVL_CHOICES", metavar="LABELS",
                help="Score these labels instead of generating (a,b,c or @FILE, one per line): prints the most "
                "probable; --json gives every label's probability.")], None),
    "logprobs": (Annotated[Optional[int], _opt("--logprobs", env="DSVL_LOGPROBS", metavar="N",
                 help="With --json: the top-N alternatives of every generated token (OpenAI's logprobs shape).")],
                 None),
    "plain": (Annotated[bool, _opt("--plain", env="DSVL_PLAIN",
              help="Plain streamed text, no Markdown rendering (the default when not a terminal).")], False),
    "json": (Annotated[bool, _opt("--json", env="DSVL_JSON",
             help="JSON output: answer, finish_reason, stats.")], False),
    "stats": (Annotated[bool, _opt("--stats", env="DSVL_STATS",
              help="Print token counts and timings on stderr.")], False),
    "exact_pixels": (Annotated[bool, _opt("--exact-pixels", env="DSVL_EXACT_PIXELS",
                     help="Decode every image in full, as the model card's code does. By default an image over "
                     "~4 MP (a phone photo) is decoded straight at the 1024 px the model sees: several times "
                     "faster, near-identical pixels.")], False),
    "debug": (Annotated[bool, _opt("--debug", env="DSVL_DEBUG",
              help="Show tracebacks for errors.")], False),
    "server": (Annotated[Optional[str], _opt("--server", env="DSVL_SERVER",
               help="URL of a running `dsvl serve`: send the work there instead of loading a model.")], None),
    "keep_alive": (Annotated[Optional[str], _opt("--keep-alive", env="DSVL_KEEP_ALIVE", metavar="DURATION",
                   help="Keep the model loaded in a private background server for DURATION after the last "
                   "request (30s, 5m, 1h; 0: off); `dsvl ps` lists them, `dsvl stop` ends them.")], None),
    "api_key": (Annotated[Optional[str], _opt("--api-key", env="DSVL_API_KEY", show_default=False,
                help="Bearer key: sent to --server; required from clients by `dsvl serve`.")], None),
}
MODEL_FIELDS = ("model", "revision", "device", "dtype", "offline", "compile", "quantize")
GEN_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "system")


# Model options that only a local model reads: with --server they would be ignored, so they are refused.
# (-m is sent to the server as the request's model.)
LOCAL_ONLY = {"revision": None, "device": "auto", "dtype": "auto", "offline": False, "compile": None,
              "quantize": None}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_common(values: dict, env: Environment | None = None) -> CommonOptions:
    """Validated settings from raw option values (raises UsageError). Options a command excluded
    take their defaults; -m not given means the default model (and "default" for --server)."""
    values = {**{name: default for name, (_, default) in SHARED.items()}, **values}
    server = values["server"] or None
    keep_alive = parse_duration(values["keep_alive"]) if values["keep_alive"] else 0.0
    if server:
        given = [_flag(k) for k, default in LOCAL_ONLY.items() if values[k] != default]
        if given:
            raise UsageError(f"{given[0]} applies to a model loaded here; with --server {server} the "
                             "server's own settings apply (drop the option, or run without --server)")
        if keep_alive:
            raise UsageError(f"--keep-alive keeps a model warm in a private server here; with --server {server} "
                             "that server answers (use one of the two)")
    from dsvl_cli.structured.spec import from_options

    answer_format = from_options(values["schema"], values["regex"], values["choices"])
    if answer_format is not None and answer_format.kind == "choices" and values["logprobs"] is not None:
        raise UsageError("--choices and --logprobs cannot be used together: --choices already gives each "
                         "label's log-probability")
    model = {k: values[k] for k in MODEL_FIELDS}
    model["model"] = values["model"] if values["model"] is not None else DEFAULT_MODEL
    return CommonOptions(
        model=ModelSettings(**model),
        generation=GenerationSettings(**{k: values[k] for k in GEN_FIELDS}, answer_format=answer_format,
                                      logprobs=values["logprobs"]),
        plain=values["plain"],
        json=values["json"],
        stats=values["stats"],
        debug=values["debug"],
        exact_pixels=values["exact_pixels"],
        server=server,
        api_key=values["api_key"] or None,
        keep_alive=keep_alive,
        env=env or Environment.current(),
        requested_model=values["model"],
    )


_CTX = "shared_options_ctx"  # the click context, for where --api-key came from


def _refuse_stray_key(raw: dict, ctx) -> None:
    """--api-key typed without --server goes nowhere: say so (as httpie does) rather than drop it.
    DSVL_API_KEY and the config file's key stay quiet: they also serve `dsvl serve`."""
    from dsvl_cli.errors import UsageError

    source = ctx.get_parameter_source("api_key") if ctx is not None else None
    typed = source is not None and source.name == "COMMANDLINE"
    if typed and raw.get("api_key") and not raw.get("server"):
        raise UsageError("--api-key is sent only to a server: give --server URL too (or drop --api-key)")


def shared_options(command=None, *, exclude: tuple[str, ...] = ()):
    """Give `command(..., opts: CommonOptions)` the shared options, each declared once above, but
    those in `exclude` (the command has no use for them: they stay out of its --help)."""
    if command is None:
        return functools.partial(shared_options, exclude=exclude)
    unknown = set(exclude) - set(SHARED)
    if unknown:
        raise ValueError(f"not shared options: {sorted(unknown)}")
    names = [name for name in SHARED if name not in exclude]
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "opts"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED[name][0],
                               default=SHARED[name][1]) for name in names]

    @functools.wraps(command)
    def wrapper(**kwargs):
        from dsvl_cli.errors import DsvlError, fail

        raw = {name: kwargs.pop(name) for name in names}
        try:
            if "server" in names:
                _refuse_stray_key(raw, kwargs[own_ctx] if own_ctx else kwargs.pop(_CTX))
            opts = build_common(raw)
        except DsvlError as err:
            fail(err, debug=raw.get("debug", False))
        return command(**kwargs, opts=opts)

    # typer fills one Context per command: a command with its own (doctor, serve) lends it to the check
    own_ctx = next((p.name for p in own if p.annotation is typer.Context), None)
    if "server" in names and own_ctx is None:
        extra.append(inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
    wrapper.__signature__ = signature.replace(parameters=own + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    del wrapper.__wrapped__  # typer must see the new signature, not the original one
    return wrapper
