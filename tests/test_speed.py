"""`sharp-prune speed` on the tiny shape: the JSON and PNG it writes, through the function and the parser.

No timing assertions: only that every configuration was timed and the reported ratios follow from the
reported timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import types
from pathlib import Path

import pytest
import torch

import sharp_prune
from sharp_prune.cli.speed import add_speed_parser
from sharp_prune.measure.memory import LiveTensorBytes
from sharp_prune.measure.shapes import SHAPES, build_model
from sharp_prune.measure.speed import BASELINE, SpeedOptions, build_prompt, run_speed

# one thread: the test machine is small and shared; OpenMP spinning on busy cores costs more than it gives
TINY = dict(shape="tiny", frames=2, tokens_per_frame=4, warmup=1, repeats=2, device="cpu", threads=1)


def _check_payload(payload: dict, path: Path, options: SpeedOptions) -> None:
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(payload))
    # the command configuration is echoed
    assert on_disk["options"]["shape"] == options.shape
    assert on_disk["options"]["methods"] == list(options.methods)
    assert on_disk["options"]["retentions"] == list(options.retentions)
    assert on_disk["options"]["repeats"] == options.repeats
    assert on_disk["command"].startswith("sharp-prune speed --shape tiny")
    machine = on_disk["machine"]
    assert machine["torch"] == torch.__version__ and machine["dtype"] == options.dtype and machine["device"] == "cpu"
    assert on_disk["prompt"]["num_visual"] == options.frames * options.tokens_per_frame
    results = on_disk["results"]
    names = [r["name"] for r in results]
    expected = [BASELINE] + [f"{m}@{r:g}" for m in options.methods for r in options.retentions]
    assert names == expected
    base = statistics.median(results[0]["times_s"])
    for r in results:
        times = r["times_s"]
        assert len(times) == options.repeats and all(t > 0 for t in times)
        assert r["median_s"] == pytest.approx(statistics.median(times))
        assert r["min_s"] == min(times) and r["max_s"] == max(times)
        assert r["time_ratio"] == pytest.approx(r["median_s"] / base)
        assert r["speedup"] == pytest.approx(base / r["median_s"])
        assert r["peak_delta_bytes"] is None or r["peak_delta_bytes"] > 0
        assert r["kv_cache_bytes"] > 0
        if r["method"] == BASELINE:
            assert r["prune_config"] is None and r["kept_visual"] == r["num_visual"] and r["layer0_calls"] == 1
            continue
        config = sharp_prune.PruneConfig.from_dict(r["prune_config"])
        assert config.retention == r["retention"] and config.layer == options.layer
        assert r["kept_visual"] == config.budget(r["num_visual"])
        if r["method"].startswith("sharp"):
            assert r["segments"] >= 1
            # the per-input prior re-runs layer 0 on the blank copy; the cached one is reused
            assert r["layer0_calls"] == (1 if r["method"] == "sharp-cached" else 2)
    png = Path(on_disk["files"]["png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_run_speed_writes_json_and_plot(tmp_path, monkeypatch, capsys):
    # a stand-in for sharp_prune.measure.flops, so that the FLOPs column and bound line are exercised
    fake = types.ModuleType("sharp_prune.measure.flops")

    def prefill_flops(model, record, config):
        ratio = record.kept_len / record.seq_len
        return types.SimpleNamespace(ratio=ratio, reduction=1.0 - ratio)

    fake.prefill_flops = prefill_flops
    monkeypatch.setitem(sys.modules, "sharp_prune.measure.flops", fake)
    monkeypatch.setattr(sharp_prune.measure, "flops", fake, raising=False)

    options = SpeedOptions(**TINY, out=str(tmp_path / "speed"))
    payload = run_speed(options, progress=False)
    path = Path(payload["files"]["json"])
    assert path.parent == tmp_path / "speed"
    _check_payload(payload, path, options)
    assert payload["flops"]["available"] and not payload["flops"]["errors"]
    for r in payload["results"][1:]:
        assert r["flops_ratio"] == pytest.approx(r["kept_len"] / r["seq_len"])
        assert r["speedup_bound"] == pytest.approx(1.0 / r["flops_ratio"])
    out = capsys.readouterr().out
    assert "sharp-cached@0.2" in out and "x unpruned" in out


def test_cli_parser_runs_the_benchmark(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="sharp-prune")
    add_speed_parser(parser.add_subparsers(dest="command", required=True))
    argv = [
        "speed",
        "--shape",
        "tiny",
        "--frames",
        "3",
        "--tokens-per-frame",
        "4",
        "--scenes",
        "1",
        "--methods",
        "fastv,sharp-cached",
        "--retentions",
        "0.25,0.5",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--out",
        str(tmp_path),
        "--threads",
        "1",
        "--quiet",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    files = sorted(tmp_path.glob("*.json"))
    assert [f.name for f in files] == ["speed_tiny_cpu_fp32_3x4.json"]
    payload = json.loads(files[0].read_text())
    options = SpeedOptions(
        shape="tiny",
        frames=3,
        tokens_per_frame=4,
        scenes=1,
        methods=("fastv", "sharp-cached"),
        retentions=(0.25, 0.5),
        warmup=1,
        repeats=2,
        device="cpu",
        dtype="fp32",
        threads=1,
        out=str(tmp_path),
    )
    _check_payload(payload, files[0], options)
    assert payload["options"] == json.loads(json.dumps({**options.__dict__, "resolved_device": "cpu"}))
    # one scene: every frame repeats the same tokens, so SegM finds a single segment
    assert {r["segments"] for r in payload["results"] if r["method"] == "sharp-cached"} == {1}
    assert "speed_tiny_cpu_fp32_3x4.png" in capsys.readouterr().out
    # the real sharp_prune.measure.flops, when present, fills the FLOPs column (else it is skipped, with the reason)
    if importlib.util.find_spec("sharp_prune.measure.flops") is not None:
        assert payload["flops"]["available"], payload["flops"]["errors"]
        assert all(r["flops_ratio"] > 0 for r in payload["results"])
    else:
        assert payload["flops"]["errors"] and all(r["flops_ratio"] is None for r in payload["results"][1:])


@pytest.mark.parametrize(
    "bad",
    [dict(methods=("nope",)), dict(retentions=(0.0,)), dict(retentions=(1.5,)), dict(shape="gpt5"), dict(scenes=9)],
)
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        SpeedOptions(**{**TINY, **bad})


def test_prompt_layout_and_scenes():
    prompt = build_prompt(256, frames=4, tokens_per_frame=3, prefix_tokens=5, suffix_tokens=2, scenes=2, pad_token_id=0)
    assert prompt.input_ids.shape == (1, 5 + 12 + 2) and prompt.num_visual == 12
    assert (prompt.input_ids != 0).all()
    assert prompt.frame_map[0].tolist() == [-1] * 5 + [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [-1] * 2
    video = prompt.input_ids[0, 5:17].view(4, 3)
    assert torch.equal(video[0], video[1]) and torch.equal(video[2], video[3]) and not torch.equal(video[1], video[2])


def test_random_weight_model_is_initialised():
    model = build_model("tiny", dtype=torch.bfloat16)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert model.model.rotary_emb.inv_freq[0] == 1.0
    with torch.no_grad():
        logits = model(input_ids=torch.arange(3, 20)[None], logits_to_keep=1).logits
    assert logits.shape == (1, 1, 256) and torch.isfinite(logits).all()


def test_live_tensor_bytes_counts_new_storages_until_freed():
    weight = torch.ones(256, 256)  # exists before: never counted
    with torch.no_grad(), LiveTensorBytes() as tracker:
        a = weight @ weight  # 256 KiB, new
        view = a.t()  # same storage: not counted again
        b = a * 2  # 256 KiB, new
        del b
        c = view.contiguous()  # 256 KiB, new, after b was freed
    assert tracker.peak == 2 * 256 * 256 * 4
    assert tracker.current == 2 * 256 * 256 * 4
    del a, view, c
    assert tracker.current == 0


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_builds_its_class_on_the_meta_device_with_a_flops_estimate(shape):
    """Each `--shape` builds (no memory: meta device) as the class its family names, with the layer count it
    declares, and the FLOPs model prices it: pruning at the shape's smallest legal K saves FLOPs at r = 0.2."""
    from sharp_prune.measure.flops import estimate

    spec = SHAPES[shape]
    model = build_model(shape, device="meta")
    assert len(model.model.layers) == spec.config["num_hidden_layers"]
    assert type(model).__name__.lower().replace("_", "").startswith(spec.family.replace("_", ""))
    kinds = spec.layer_types
    first_full = kinds.index("full_attention")
    k = max(2, first_full + 1)
    config = sharp_prune.PruneConfig(method="fastv", retention=0.2, layer=k)
    report = estimate(model.config, 32 * 50 + 40, 32 * 50, config=config, prompt_len=20)
    assert 0 < report.total < report.unpruned
