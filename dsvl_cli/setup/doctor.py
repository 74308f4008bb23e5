"""`dsvl doctor`: what this machine has, whether the model will fit, and what to run next.

Each check returns plain data (the report is the `--json` output); `render` turns it into one
screen. torch is imported here (the GPU list needs it): doctor takes seconds, like any model load.
The Hub and `--server` get PROBE_TIMEOUT_S each. `gpu_memory` replaces the GPU list with one GPU of
that size (`--gpu-memory`, for "would it fit on a 24 GiB card?" and for tests).
"""

from __future__ import annotations

import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

from dsvl_cli import catalog
from dsvl_cli.models import hub

PACKAGES = ("torch", "transformers", "accelerate", "huggingface_hub", "torchao", "llguidance", "fastapi",
            "uvicorn", "ray")


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def gpus(gpu_memory: int | None) -> dict:
    import torch

    info = {"torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
            "simulated": gpu_memory is not None, "gpus": []}
    if gpu_memory is not None:
        info["gpus"] = [{"index": 0, "name": "simulated", "total_bytes": gpu_memory, "free_bytes": gpu_memory}]
    elif info["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            info["gpus"].append({"index": index, "name": torch.cuda.get_device_name(index),
                                 "total_bytes": total, "free_bytes": free})
    return info


def compile_check(cuda: bool) -> dict:
    """Whether `torch.compile` can build kernels here: triton for CUDA, a C compiler for CPU."""
    from importlib.util import find_spec

    if find_spec("torch._dynamo") is None:
        return {"usable": False, "why": "this torch has no torch._dynamo"}
    if cuda:
        ok = find_spec("triton") is not None
        return {"usable": ok, "why": "triton is installed" if ok else "triton is missing (pip install triton)"}
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    return {"usable": compiler is not None,
            "why": f"C compiler {compiler}" if compiler else "no C compiler (cc, gcc, clang) on PATH"}


def model_fit(name: str, gpu_list: list[dict], home: Path) -> dict:
    from dsvl_cli.models import cache
    from dsvl_cli.setup import fit

    repo = catalog.HUB_ALIASES.get(name, name)
    local = cache.find(cache.local_models(home, include_all=True), name)
    folder = Path(name).expanduser() if Path(name).expanduser().is_dir() else None
    if local is not None:
        folder = Path(local.path) if local.kind == "built" else Path(local.path) / "snapshots" / local.revisions[0]["commit"]
    found = fit.find_config(repo, folder)
    report = {"name": name, "repo": repo, "local": local is not None or folder is not None,
              "random_weights": name in catalog.RANDOM_MODELS}
    if found is None:
        return {**report, "config": None, "why": "its config is not on this machine (dsvl pull it first)"}
    config, source = found
    footprint = fit.footprint(config)
    report.update(config=source, footprint=footprint.to_dict(),
                  # free, not total: what another process holds is not there for dsvl now
                  fits=[{"gpu": g["index"], "memory_bytes": g["free_bytes"],
                         "modes": [footprint.fit(mode, g["free_bytes"]) for mode in fit.MODES]} for g in gpu_list])
    return report


def disk(path: Path) -> dict:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return {"path": str(path), "exists": path.exists(), "free_bytes": shutil.disk_usage(probe).free}


def hub_check(is_offline: bool) -> dict:
    why = None if is_offline else hub.probe()
    return {"endpoint": hub.endpoint(), "reachable": None if is_offline else why is None, "why": why}


def server_check(url: str | None) -> dict | None:
    if not url:
        return None
    why = hub.probe(url.rstrip("/") + "/health")
    return {"url": url, "reachable": why is None, "why": why}


def collect(model: str, offline: bool, server: str | None, settings: list[dict], gpu_memory: int | None,
            home: Path) -> dict:
    from dsvl_cli.engine.quantize import torchao_available

    gpu = gpus(gpu_memory)
    is_offline = hub.offline(offline)
    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()},
        "packages": versions(), "torch": gpu,
        "compile": compile_check(gpu["cuda_available"]),
        "quantize": {"torchao": torchao_available()},
        "cache": disk(hub.cache_dir()), "dsvl_home": str(home),
        "offline": is_offline,
        "hub": hub_check(is_offline),
        "server": server_check(server),
        "model": model_fit(model, gpu["gpus"], home),
        "settings": settings,
    }
    report["verdict"], report["next"] = verdict(report)
    return report


def verdict(report: dict) -> tuple[str, str]:
    """One sentence on the state of things, and the next command to run."""
    model = report["model"]
    alias = next((a for a, r in catalog.HUB_ALIASES.items() if r == model["repo"]), model["name"])
    try_it = 'dsvl ask examples/shapes.png "Describe this image."'
    if not model["local"] and not model["random_weights"]:
        if report["hub"]["reachable"]:
            return f"{model['name']} is not downloaded yet", f"dsvl pull {alias}"
        cause = "offline mode is on" if report["offline"] else "the Hub cannot be reached"
        return (f"{model['name']} is not on this machine and {cause}",
                f"{try_it} --model tiny-random   (random weights; or --model PATH to a local copy)")
    if model["random_weights"]:
        return f"{model['name']} runs here (random weights: answers are noise)", f"{try_it} -m {model['name']}"
    if not report["torch"]["gpus"]:
        where = "MPS" if report["torch"]["mps_available"] else "the CPU"
        return (f"no CUDA GPU: {model['name']} runs on {where}, slowly",
                f"{try_it} -m {alias}" if alias == "1.3b" else f"{try_it} -m 1.3b   (the smaller model)")
    modes = model.get("fits") and model["fits"][0]["modes"]
    if not modes:
        return f"{model['name']}: cannot tell whether it fits ({model.get('why')})", f"{try_it} -m {alias}"
    best = next((m for m in modes if m["fits"]), None)
    if best is None:
        return f"{model['name']} does not fit GPU 0 even in int4", f"{try_it} -m 1.3b"
    if best["mode"] == "bf16":
        return f"{model['name']} fits GPU 0 in bf16", f"{try_it} -m {alias}"
    if not report["quantize"]["torchao"]:
        return (f"{model['name']} fits GPU 0 only as {best['mode']}, which needs torchao",
                "pip install 'dsvl-cli[quantize]'")
    return f"{model['name']} fits GPU 0 as {best['mode']}", f"{try_it} -m {alias} --quantize {best['mode']}"


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def render(r: dict) -> str:
    """The report as one screen of text."""
    t, p = r["torch"], r["packages"]
    build = f"CUDA {t['torch_cuda_build']}" if t["torch_cuda_build"] else "CPU-only build"
    lines = [f"python        {r['python']['version']} ({r['python']['executable']})",
             f"torch         {p['torch']} ({build}); transformers {p['transformers']}; accelerate {p['accelerate']}",
             "extras        " + ", ".join(f"{k} {v or 'not installed'}" for k, v in p.items()
                                          if k in ("torchao", "llguidance", "fastapi", "uvicorn", "ray"))]
    for g in t["gpus"]:
        lines.append(f"GPU {g['index']}         {g['name']}: {gib(g['total_bytes'])} total, {gib(g['free_bytes'])} free"
                     + (" (simulated: --gpu-memory)" if t["simulated"] else ""))
    if not t["gpus"]:
        lines.append("GPU           none" + (" (MPS available)" if t["mps_available"] else ""))
    m = r["model"]
    for fit in m.get("fits") or []:
        parts = [f"{x['mode']} {'fits' if x['fits'] else 'no'} ({gib(x['weights_bytes'])} weights, context "
                 f"{x['max_context']:,} tokens)" if x["fits"] else f"{x['mode']} no (needs {gib(x['needs_bytes'])})"
                 for x in fit["modes"]]
        lines.append(f"fit on GPU {fit['gpu']}  {m['name']} in {gib(fit['memory_bytes'])} free: " + "; ".join(parts))
    if m.get("footprint"):
        f = m["footprint"]
        lines.append(f"model         {m['name']}: {f['params'] / 1e9:.2f} B parameters, KV cache "
                     f"{f['kv_bytes_per_token'] / 2**10:.0f} KiB per token (from {m['config']})")
    lines.append(f"compile       {'usable' if r['compile']['usable'] else 'not usable'}: {r['compile']['why']}")
    c = r["cache"]
    lines.append(f"HF cache      {c['path']} ({gib(c['free_bytes'])} free){'' if c['exists'] else ' (empty)'}")
    hub_state = "offline mode" if r["offline"] else ("reachable" if r["hub"]["reachable"] else f"NOT reachable ({r['hub']['why']})")
    lines.append(f"Hub           {r['hub']['endpoint']}: {hub_state}")
    if r["server"]:
        s = r["server"]
        lines.append(f"server        {s['url']}: {'reachable' if s['reachable'] else 'NOT reachable (' + s['why'] + ')'}")
    lines.append("settings      " + ", ".join(f"{s['key']}={s['value']} ({s['source']})" for s in r["settings"]
                                            if s["source"] != "default" or s["key"] == "model"))
    lines += ["", f"verdict: {r['verdict']}", f"next:    {r['next']}"]
    return "\n".join(lines)
