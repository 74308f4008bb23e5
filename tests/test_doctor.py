"""`dsvl doctor` and the fit computation: the parameter count and KV-cache size it computes from a
config equal what a real model holds; verdicts for a simulated GPU size (--gpu-memory)."""

from __future__ import annotations

import json

import pytest

from dsvl_cli.setup import fit


def test_footprint_counts_what_the_real_model_holds(reference, tiny_folder):
    """Parameters from the meta-device count equal the loaded tiny model's; KV bytes per token equal
    the cache a real forward pass fills."""
    import torch

    model, processor = reference
    config, source = fit.find_config("tiny-random", tiny_folder)
    assert source.endswith("config.json")
    footprint = fit.footprint(config)
    assert footprint.params == sum(p.numel() for p in model.parameters())
    assert footprint.hybrid is True
    tokens = 7
    with torch.inference_mode():
        out = model.model.language_model(input_ids=torch.arange(tokens)[None] + 10, use_cache=True)
    cache = out.past_key_values
    elements = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers)
    assert footprint.kv_elements_per_token == elements // tokens
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name.startswith("model.language_model"))
    assert footprint.quantizable_params == linear  # the language model's linears, not lm_head


def test_weight_bytes_per_mode_and_context_room():
    footprint = fit.Footprint(params=1000 * 2**20, quantizable_params=800 * 2**20, quantizable_rows=2**20,
                              kv_elements_per_token=2**19, context_length=4096, hybrid=True)
    assert footprint.weight_bytes("bf16") == 2000 * 2**20
    assert footprint.weight_bytes("int8") == 400 * 2**20 + 800 * 2**20 + 2 * 2**20
    assert footprint.weight_bytes("int4") == 400 * 2**20 + 400 * 2**20 + (800 * 2**20 // 128) * 4
    memory = footprint.weight_bytes("bf16") + fit.RESERVE_BYTES + 3000 * 2**20  # room for 3000 tokens of 1 MiB
    verdict = footprint.fit("bf16", memory)
    assert verdict["max_context"] == 3000 and verdict["fits"] is True
    assert footprint.fit("bf16", memory + 10 * 2**30)["max_context"] == 4096  # capped at the model's context
    assert footprint.fit("bf16", memory - 1000 * 2**20)["fits"] is False  # 2000 tokens < MIN_CONTEXT


@pytest.mark.parametrize("text, expected", [("24GiB", 24 * 2**30), ("80G", 80 * 2**30), ("512MiB", 2**29),
                                            ("1.5 GB", 3 * 2**29), ("1000", 1000)])
def test_parse_size(text, expected):
    assert fit.parse_size(text) == expected


def test_doctor_json_reports_cpu_torch_and_the_7b_fit_on_a_simulated_gpu(cli, monkeypatch):
    import torch

    result = cli(["doctor", "--json", "--gpu-memory", "24GiB", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["torch"]["torch_cuda_build"] == torch.version.cuda  # None: this machine's CPU-only torch
    assert report["torch"]["gpus"] == [{"index": 0, "name": "simulated", "total_bytes": 24 * 2**30,
                                        "free_bytes": 24 * 2**30}]
    model = report["model"]
    assert model["repo"] == "deepseek-community/deepseek-vl-7b-chat" and model["config"] == "dsvl's copy of its shapes"
    assert 6.5e9 < model["footprint"]["params"] < 7.5e9
    modes = {m["mode"]: m for m in model["fits"][0]["modes"]}
    assert all(m["fits"] for m in modes.values())
    assert modes["bf16"]["weights_bytes"] > modes["int8"]["weights_bytes"] > modes["int4"]["weights_bytes"]
    assert report["offline"] is True and report["hub"]["reachable"] is None  # conftest: HF_HUB_OFFLINE
    assert report["server"]["reachable"] is False
    assert report["verdict"] and report["next"]
    assert {row["key"]: row["source"] for row in report["settings"]}["server"] == "command line"

    small = json.loads(cli(["doctor", "--json", "--gpu-memory", "10GiB"]).stdout)
    fits = {m["mode"]: m["fits"] for m in small["model"]["fits"][0]["modes"]}
    assert fits == {"bf16": False, "int8": True, "int4": True}


def test_doctor_screen_ends_with_a_verdict_and_the_next_command(cli, monkeypatch, isolated_home):
    config = isolated_home / ".config" / "dsvl" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('model = "tiny-random"\n')
    monkeypatch.setenv("DSVL_DTYPE", "float32")
    result = cli(["doctor", "--gpu-memory", "2GiB"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("verdict: tiny-random") and lines[-1].startswith("next:    dsvl ask")
    assert "-m tiny-random" in lines[-1]
    settings = next(line for line in lines if line.startswith("settings"))
    assert "model=tiny-random (config file)" in settings and "dtype=float32 (environment)" in settings
    assert any(line.startswith("fit on GPU 0  tiny-random in 2.0 GiB free: bf16 fits") for line in lines)
