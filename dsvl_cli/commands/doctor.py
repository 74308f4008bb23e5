"""`dsvl doctor`: one screen on this machine, the model's fit, the Hub, the settings (setup/doctor.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsvl_cli.options import CommonOptions, SHARED, shared_options

# doctor reads the model's options; generation and output options say nothing about the machine.
_READS = ("model", "revision", "device", "dtype", "offline", "quantize", "server", "api_key", "debug")


@shared_options(exclude=tuple(name for name in SHARED if name not in _READS))
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="The whole report as one JSON object.")] = False,
    gpu_memory: Annotated[Optional[str], typer.Option("--gpu-memory", hidden=True,
                                                      help="Pretend to have one GPU of this size (24GiB).")] = None,
    opts: CommonOptions = None,
) -> None:
    """Check this machine: versions, GPUs and whether the model fits (bf16, int8, int4), torch.compile,
    the Hugging Face cache, the Hub, --server, and where each setting comes from. Ends with the next
    command to run.

    \b
    Examples:
      dsvl doctor
      dsvl doctor -m 1.3b --json | jq .verdict
    """
    from dsvl_cli.engine.runtime import dsvl_home
    from dsvl_cli.errors import guarded
    from dsvl_cli.screen.text import write_json
    from dsvl_cli.setup import config
    from dsvl_cli.setup import doctor as checks
    from dsvl_cli.setup.fit import parse_size

    with guarded(opts.debug):
        memory = parse_size(gpu_memory) if gpu_memory else None
        given = {name: ctx.params[name] for name in ctx.params if name in _READS
                 and ctx.get_parameter_source(name).name == "COMMANDLINE"}
        report = checks.collect(opts.model.model, opts.model.offline, opts.server, config.effective(given=given),
                                memory, dsvl_home())
        if as_json:
            write_json(report, default=str)
        else:
            print(checks.render(report))
