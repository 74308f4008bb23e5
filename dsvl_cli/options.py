"""Shared command-line options, declared once.

`shared_options` adds the model, generation and output options (each with its `DSVL_*` variable)
to a command's signature and hands the command one validated `CommonOptions` instead. No torch here.
"""

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from dsvl_cli.settings import DEFAULT_MODEL, GenerationSettings, ModelSettings

MODEL = "Model"
GEN = "Generation"
OUT = "Output"


@dataclass(frozen=True)
class CommonOptions:
    model: ModelSettings
    generation: GenerationSettings
    plain: bool = False
    json: bool = False
    stats: bool = False
    debug: bool = False
    server: str | None = None  # --server: a running `dsvl serve` does the work (remote.py)
    api_key: str | None = None
    requested_model: str | None = None  # -m/DSVL_MODEL as given; None: not given (--server sends "default")


def _opt(*decls: str, env: str, help: str, panel: str, **kw) -> typer.models.OptionInfo:
    return typer.Option(*decls, envvar=env, help=help, rich_help_panel=panel, show_envvar=True, **kw)


# name -> (annotation, default); the order is the order in --help.
SHARED: dict[str, tuple] = {
    "model": (Annotated[str, _opt("-m", "--model", env="DSVL_MODEL", panel=MODEL,
              help="Hub id, local folder, or alias: 7b, 1.3b, tiny-random (random weights, offline).",
              show_default=DEFAULT_MODEL)], None),
    "revision": (Annotated[Optional[str], _opt("--revision", env="DSVL_REVISION", panel=MODEL,
                 help="Hub branch, tag or commit.")], None),
    "device": (Annotated[str, _opt("--device", env="DSVL_DEVICE", panel=MODEL,
               help="auto, cpu, cuda, cuda:N or mps.")], "auto"),
    "dtype": (Annotated[str, _opt("--dtype", env="DSVL_DTYPE", panel=MODEL,
              help="auto (bf16 on CUDA, fp16 on MPS, fp32 on CPU), bfloat16, float16 or float32.")], "auto"),
    "offline": (Annotated[bool, _opt("--offline", env="DSVL_OFFLINE", panel=MODEL,
                help="Never touch the network for models; use the local cache only.")], False),
    "compile": (Annotated[Optional[bool], _opt("--compile/--no-compile", env="DSVL_COMPILE", panel=MODEL,
                help="Static KV cache + torch.compile decode (default: on for chat and batch on CUDA; "
                "off on CPU, where the first compile takes ~30 s).")], None),
    "quantize": (Annotated[Optional[str], _opt("--quantize", env="DSVL_QUANTIZE", panel=MODEL,
                 help="Weight-only int8 or int4 with torchao: CUDA only, needs torchao "
                 "(pip install 'dsvl-cli[quantize]'); exit 2 where it cannot run.")], None),
    "max_new_tokens": (Annotated[int, _opt("-n", "--max-new-tokens", env="DSVL_MAX_NEW_TOKENS", panel=GEN,
                       help="Most tokens to generate.")], 512),
    "temperature": (Annotated[float, _opt("-t", "--temperature", env="DSVL_TEMPERATURE", panel=GEN,
                    help="0 means greedy (deterministic).")], 0.0),
    "top_p": (Annotated[Optional[float], _opt("--top-p", env="DSVL_TOP_P", panel=GEN,
              help="Nucleus sampling (with --temperature > 0).")], None),
    "top_k": (Annotated[Optional[int], _opt("--top-k", env="DSVL_TOP_K", panel=GEN,
              help="Top-k sampling (with --temperature > 0).")], None),
    "repetition_penalty": (Annotated[Optional[float], _opt("--repetition-penalty", env="DSVL_REPETITION_PENALTY",
                           panel=GEN, help="Penalise repeated tokens (1.0 = off).")], None),
    "seed": (Annotated[Optional[int], _opt("--seed", env="DSVL_SEED", panel=GEN,
             help="Random seed for sampling.")], None),
    "system": (Annotated[Optional[str], _opt("-s", "--system", env="DSVL_SYSTEM", panel=GEN,
               help="System prompt (replaces DeepSeek-VL's default one).")], None),
    "plain": (Annotated[bool, _opt("--plain", env="DSVL_PLAIN", panel=OUT,
              help="Plain streamed text, no Markdown rendering (the default when not a terminal).")], False),
    "json": (Annotated[bool, _opt("--json", env="DSVL_JSON", panel=OUT,
             help="JSON output: answer, finish_reason, stats.")], False),
    "stats": (Annotated[bool, _opt("--stats", env="DSVL_STATS", panel=OUT,
              help="Print token counts and timings on stderr.")], False),
    "debug": (Annotated[bool, _opt("--debug", env="DSVL_DEBUG", panel=OUT,
              help="Show tracebacks for errors.")], False),
    "server": (Annotated[Optional[str], _opt("--server", env="DSVL_SERVER", panel=MODEL,
               help="URL of a running `dsvl serve`: send the work there instead of loading a model.")], None),
    "api_key": (Annotated[Optional[str], _opt("--api-key", env="DSVL_API_KEY", panel=MODEL, show_default=False,
                help="Bearer key: sent to --server; required from clients by `dsvl serve`.")], None),
}
MODEL_FIELDS = ("model", "revision", "device", "dtype", "offline", "compile", "quantize")
GEN_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "system")


def build_common(values: dict) -> CommonOptions:
    """Validated settings from raw option values (raises UsageError)."""
    model = {k: values[k] for k in MODEL_FIELDS}
    model["model"] = values["model"] if values["model"] is not None else DEFAULT_MODEL
    return CommonOptions(
        model=ModelSettings(**model),
        generation=GenerationSettings(**{k: values[k] for k in GEN_FIELDS}),
        plain=values["plain"],
        json=values["json"],
        stats=values["stats"],
        debug=values["debug"],
        server=values.get("server") or None,
        api_key=values.get("api_key") or None,
        requested_model=values["model"],
    )


def shared_options(command):
    """Give `command(..., opts: CommonOptions)` every shared option, each declared once above."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "opts"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
             for name, (ann, default) in SHARED.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        from dsvl_cli.errors import DsvlError, fail

        raw = {name: kwargs.pop(name) for name in SHARED}
        try:
            opts = build_common(raw)
        except DsvlError as err:
            fail(err, debug=raw["debug"])
        return command(**kwargs, opts=opts)

    wrapper.__signature__ = signature.replace(parameters=own + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    del wrapper.__wrapped__  # typer must see the new signature, not the original one
    return wrapper
