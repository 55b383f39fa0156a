"""GPU checks (`-m cuda`): skipped without a CUDA GPU, run by `scripts/device_check.sh` where there is one.

What the CPU suite cannot see: the engine on CUDA tensors in bf16 (scores in fp32, plans on the device, generate
from the pruned cache), flash attention 2 (when its kernels are installed), and the speed command's CUDA timing
and memory figures.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.measure.speed import SpeedOptions, run_speed
from sharp_prune.testing import TINY_FAMILIES, tiny_inputs, tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/device_check.sh)"),
]


def _on_cuda(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.cuda().to(dtype) if v.is_floating_point() else v.cuda() for k, v in inputs.items()}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["fastv", "feather", "divprune", "sharp"])
def test_bf16_generate_on_cuda_prunes_like_the_cpu(family, method):
    """bf16 on the GPU: the plan equals the fp32 CPU plan for scoring-free methods, and generate runs."""
    cpu = tiny_model(family)
    gpu = tiny_model(family, dtype=torch.bfloat16).cuda()
    inputs = tiny_inputs(cpu, [3, 5], [4, 2])
    config = sp.PruneConfig(method=method, retention=0.25, layer=2)
    with sp.apply(gpu, config) as handle, torch.no_grad():
        logits = gpu(**_on_cuda(inputs, torch.bfloat16)).logits
        assert logits.is_cuda and bool(torch.isfinite(logits.float()).all())
        assert handle.last.budget == [16, 16]
        tokens = gpu.generate(**_on_cuda(inputs, torch.bfloat16), max_new_tokens=4, do_sample=False)
        assert tokens.shape[1] == inputs["input_ids"].shape[1] + 4
        assert torch.equal(tokens[:, inputs["input_ids"].shape[1]].cpu(), logits[:, -1].argmax(-1).cpu())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_fp32_sdpa_on_cuda_matches_the_reference(family):
    model = tiny_model(family).cuda()
    inputs = _on_cuda(tiny_inputs(model.cpu(), [5], [6]), torch.float32)
    model = model.cuda()
    with sp.apply(model, method="fastv", retention=0.25, layer=2) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    record = handle.last
    visual, kept = set(record.visual_positions[0].tolist()), set(record.keep_positions[0].tolist())
    keep = torch.tensor([p for p in range(inputs["input_ids"].shape[1]) if p not in visual or p in kept]).cuda()
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, 2)
    torch.testing.assert_close(pruned, expected, atol=1e-4, rtol=1e-4)


def test_flash_attention_2_prunes_and_generates():
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        pytest.skip("flash-attn 2 is not installed on this GPU machine")
    model = tiny_model("qwen2_vl", dtype=torch.bfloat16, attn_implementation="flash_attention_2").cuda()
    inputs = _on_cuda(tiny_inputs(model.cpu(), [3, 5], [4, 2]), torch.bfloat16)
    model = model.cuda()
    with sp.apply(model, method="sharp", retention=0.25) as handle, torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert handle.last.budget == [16, 16] and tokens.shape[1] == inputs["input_ids"].shape[1] + 4


def test_speed_times_with_cuda_events_and_reports_cuda_memory(tmp_path):
    options = SpeedOptions(
        shape="tiny", frames=2, tokens_per_frame=4, warmup=1, repeats=2, device="cuda", out=str(tmp_path)
    )
    payload = run_speed(options, progress=False)
    assert "CUDA events" in payload["protocol"]
    for result in payload["results"]:
        assert result["median_s"] > 0 and len(result["times_s"]) == 2
        assert result["peak_bytes"] is not None and result["peak_delta_bytes"] is not None


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("extra", [{}, {"posc_prior": "cached"}])
def test_a_pruned_forward_syncs_only_where_listed(family, extra):
    """CUDA's sync debug mode sees every host sync of a ShaRP prefill; those in sharp-prune's files are the listed
    sites, and no more of them than the CPU counter finds on the same forward."""
    import warnings
    from pathlib import Path

    from sharp_prune.measure.host_syncs import PRUNING_PATH_SYNCS, count_host_syncs

    package = Path(sp.__file__).resolve().parent
    listed = {site.split(":")[0] for site in PRUNING_PATH_SYNCS}
    gpu = tiny_model(family, dtype=torch.bfloat16).cuda()
    inputs = _on_cuda(tiny_inputs(gpu, [3], [4]), torch.bfloat16)
    with sp.apply(gpu, sp.PruneConfig(method="sharp", retention=0.25, layer=2, **extra)), torch.no_grad():
        gpu(**inputs)
        torch.cuda.synchronize()
        with count_host_syncs() as counted, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                gpu(**inputs)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    ours = [Path(w.filename).resolve() for w in caught if Path(w.filename).resolve().is_relative_to(package)]
    assert {p.relative_to(package).as_posix() for p in ours} <= listed
    assert len(ours) <= len(counted)
