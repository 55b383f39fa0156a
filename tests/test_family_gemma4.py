"""Gemma 4: one span of video tokens per frame between <boi> / <eoi>, on a text stack with bidirectional attention
inside frames (sliding layers), per-layer inputs and layers that share another layer's keys and values.

The family battery (identity, drop equivalence, generate, padded batches, every method, lifecycle) runs Gemma 4
through `TINY_FAMILIES` (4 layers: full, sliding, sliding, full; no KV sharing below 6 layers); this file holds what
is Gemma 4's own: the layout, the black frame, the vision FLOPs, the torch-only video processor, the unpruned
tiny model, and pruning against a hand-written reference on the 6-layer stack whose last two layers share KV.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from gemma4_release import requires_gemma4

import sharp_prune as sp
from sharp_prune.hf_protocol import read_model_call
from sharp_prune.measure.flop_counter import flop_counter_mode
from sharp_prune.models import FAMILIES, resolve_adapter, vision_flops
from sharp_prune.models import tiny as tiny_ids
from sharp_prune.models.gemma4 import (
    TIMESTAMP_TOKENS,
    blank_frame_gemma4,
    locate_gemma4,
    patch_positions,
    torch_video_processors,
    vision_flops_gemma4,
)
from sharp_prune.models.processors import TorchVideoOps, interpolate_frames
from sharp_prune.steps.locate import VisualLayout
from sharp_prune.testing import TinyVideo, sample_of, tiny_inputs, tiny_model

pytestmark = requires_gemma4


FAMILY = "gemma4"
VIDEO, BOI, EOI = tiny_ids.VIDEO_TOKEN_ID, tiny_ids.VISION_START_ID, tiny_ids.VISION_END_ID


@pytest.fixture(scope="module")
def model():
    return tiny_model(FAMILY)


@pytest.fixture(scope="module")
def shared():
    """Six layers (full, sliding, sliding, full | sliding, full): layers 4 and 5 reuse the KV of 2 and 3."""
    return tiny_model(FAMILY, num_layers=6)


def _call(inputs: dict, with_positions: bool = True):
    """The forward call as the engine reads it; without `video_position_ids` (as under `generate`) unless
    `with_positions`."""
    if not with_positions:
        inputs = {k: v for k, v in inputs.items() if k != "video_position_ids"}
    return read_model_call([], (), inputs)


def _video_inputs(grid: tuple[int, int], frames: int, model, prefix: int = 3, suffix: int = 4) -> dict:
    """One sample with `frames` frames of grid[0] x grid[1] soft tokens, in the processor's layout (no padding)."""
    k, patch = model.config.vision_config.pooling_kernel_size, model.config.vision_config.patch_size
    rows, cols = grid[0] * k, grid[1] * k
    ids = [5] * prefix
    for f in range(frames):
        ids += [17 + f, 30, 18] + [BOI] + [VIDEO] * (grid[0] * grid[1]) + [EOI]
    ids += [7] * suffix
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": torch.rand(
            frames, rows * cols, 3 * patch * patch, generator=torch.Generator().manual_seed(0)
        ),
        "video_position_ids": patch_positions(rows, cols)[None].repeat(frames, 1, 1),
        "num_frames_per_video": torch.tensor([frames]),
        "mm_token_type_ids": (input_ids == VIDEO).long() * 2,
    }


# ------------------------------------------------------------------------------------------------ the adapter
def test_the_class_resolves_to_the_gemma4_entry(model):
    adapter = resolve_adapter(model)
    assert adapter is FAMILIES[FAMILY]
    assert adapter.model_types == ("gemma4",) and adapter.processor_class == "Gemma4Processor"
    assert adapter.layers(model) is model.model.language_model.layers
    assert resolve_adapter(model.model) is adapter  # the *Model base too


# ------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("with_positions", [True, False], ids=["video_position_ids", "span-lengths"])
def test_every_video_token_is_located_and_each_span_is_one_frame(model, with_positions):
    inputs = tiny_inputs(model, [3, 5], [4, 2], padding_side="left")
    layout = locate_gemma4(model, _call(inputs, with_positions), None)
    assert layout.frames == 4 and layout.grid == (4, 4)
    ids = inputs["input_ids"]
    for row in range(2):
        expected = (ids[row] == VIDEO).nonzero().flatten()
        assert torch.equal(layout.positions[row], expected)
        assert torch.equal(layout.frame_ids[row], torch.arange(4).repeat_interleave(16))
        # each frame: <boi> right before, <eoi> right after, the timestamp text before <boi>: all left unpruned
        starts = layout.positions[row][::16]
        assert (ids[row, starts - 1] == BOI).all() and (ids[row, starts + 16] == EOI).all()
        assert starts.diff().tolist() == [16 + 2 + TIMESTAMP_TOKENS] * 3
    # the processor's mm_token_type_ids mark exactly these tokens (2: video), which the bidirectional blocks use
    marked = inputs["mm_token_type_ids"] == 2
    assert torch.equal(marked.nonzero()[:, 1].view(2, -1), layout.positions)


def test_images_and_audio_tokens_are_not_video(model):
    config = model.config
    ids = [5, BOI, *[config.image_token_id] * 6, EOI, config.boa_token_id, *[config.audio_token_id] * 3]
    ids += [config.eoa_token_index, 6, BOI, *[VIDEO] * 4, EOI, 7]
    call = read_model_call([], (), {"input_ids": torch.tensor([ids])})
    layout = locate_gemma4(model, call, None)
    assert layout.positions.tolist() == [[i for i, t in enumerate(ids) if t == VIDEO]]
    assert layout.grid == (2, 2)
    images_only = torch.tensor([[5, BOI, *[config.image_token_id] * 6, EOI, 7]])
    assert locate_gemma4(model, read_model_call([], (), {"input_ids": images_only}), None) is None


def test_a_non_square_frame_size_comes_from_the_video_position_ids(model):
    inputs = _video_inputs((2, 3), frames=3, model=model)
    layout = locate_gemma4(model, _call(inputs), None)
    assert layout.grid == (2, 3) and layout.frames == 3 and layout.num_visual == 18
    # without them (under generate) 6 tokens a frame is no square: the size is unknown, the frames are found
    without = locate_gemma4(model, _call(inputs, with_positions=False), None)
    assert without.grid is None and torch.equal(without.frame_ids, layout.frame_ids)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()  # the inputs are what the real class accepts


def test_position_ids_that_do_not_describe_the_frames_are_refused(model):
    inputs = _video_inputs((2, 3), frames=3, model=model)
    inputs["video_position_ids"] = inputs["video_position_ids"][:2]
    with pytest.raises(sp.InputError, match="video_position_ids"):
        locate_gemma4(model, _call(inputs), None)


def test_samples_with_different_video_token_counts_are_refused(model):
    a = _video_inputs((2, 2), frames=2, model=model)["input_ids"][0]
    b = _video_inputs((2, 2), frames=3, model=model)["input_ids"][0]
    ids = torch.stack([torch.cat([torch.full((b.numel() - a.numel(),), 0), a]), b])
    with pytest.raises(sp.InputError, match="same number of video tokens"):
        locate_gemma4(model, read_model_call([], (), {"input_ids": ids}), None)


# ------------------------------------------------------------------------------------------------ the tiny model
def test_the_tiny_config_has_what_makes_gemma4_special(model, shared):
    text = shared.config.text_config
    assert text.use_bidirectional_attention == "vision"
    assert text.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"] + [
        "sliding_attention",
        "full_attention",
    ]
    assert text.sliding_window == 8 and text.hidden_size_per_layer_input > 0
    assert text.num_kv_shared_layers == 2 and text.kv_sharing_modes[-2:] == ["reuse", "reuse"]
    assert model.config.text_config.num_kv_shared_layers == 0  # 4 layers: every K in 1..3 stays legal
    assert model.config.audio_config is None and model.model.audio_tower is None


@pytest.mark.parametrize("num_layers", [4, 6])
def test_tiny_inputs_run_an_unpruned_forward_and_generate(num_layers, model, shared):
    m = model if num_layers == 4 else shared
    inputs = tiny_inputs(m, [3, 5], [4, 2], padding_side="left")
    with torch.no_grad():
        logits = m(**inputs).logits
        tokens = m.generate(**inputs, max_new_tokens=4, do_sample=False)
        # the bidirectional blocks matter: without mm_token_type_ids the sliding layers are causal everywhere
        causal = m(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    assert logits.shape == (2, inputs["input_ids"].shape[1], tiny_ids.VOCAB) and torch.isfinite(logits).all()
    assert tokens.shape == (2, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(tokens[:, -4], logits[:, -1].argmax(-1))
    assert not torch.allclose(logits, causal)


# ------------------------------------------------------------------------------------------------ video processor
@functools.cache
def _official_processor_class() -> type:
    """transformers' own Gemma4VideoProcessor, its module run with torch's resize kernel standing in for
    torchvision's (the module names torchvision in a signature, so it cannot be imported without it): every step
    but the resize kernel is transformers' code."""
    import transformers.models.gemma4 as package

    path = Path(package.__file__).parent / "video_processing_gemma4.py"
    spec = importlib.util.spec_from_file_location("transformers.models.gemma4._reference_video_processing", path)
    module = importlib.util.module_from_spec(spec)

    def resize(video, size, interpolation=None, antialias=True):
        return interpolate_frames(video, tuple(size), "bicubic", antialias)

    module.tvF = types.SimpleNamespace(InterpolationMode=object, resize=resize)
    sys.modules[spec.name] = module  # transformers' docstring helper reads the class's source through its module
    spec.loader.exec_module(module)
    return type("Gemma4VideoProcessor", (TorchVideoOps, module.Gemma4VideoProcessor), {})


def _pattern(frames: int, height: int, width: int) -> np.ndarray:
    t, y, x, c = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return (20 * t + 50 * c + (7 * y + 3 * x) % 40).astype(np.uint8)


TINY_PROCESSOR = dict(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70, do_sample_frames=False)


def test_the_torch_processor_is_found_by_the_checkpoints_class_name():
    (cls,) = torch_video_processors()
    assert cls.__name__ == "Gemma4VideoProcessor"
    assert FAMILIES[FAMILY].video_processors() == (cls,)


@pytest.mark.parametrize("size", [(56, 80), (48, 64), (30, 100), (64, 64)])
def test_the_torch_processor_equals_transformers_steps(size):
    (ours,) = torch_video_processors()
    official = _official_processor_class()
    video = _pattern(3, *size)
    mine = ours(**TINY_PROCESSOR)(video, return_tensors="pt")
    theirs = official(**TINY_PROCESSOR)(video, return_tensors="pt")
    for key in ("pixel_values_videos", "video_position_ids"):
        assert torch.equal(mine[key], theirs[key]), key
    assert mine["num_frames_per_video"].tolist() == theirs["num_frames_per_video"].tolist() == [3]
    assert mine["num_soft_tokens_per_video"].tolist() == theirs["num_soft_tokens_per_video"].tolist()


def test_frame_sampling_equals_transformers():
    (ours,) = torch_video_processors()
    official = _official_processor_class()
    video = _pattern(40, 56, 80)
    options = {**TINY_PROCESSOR, "do_sample_frames": True, "num_frames": 5}
    from transformers.video_utils import VideoMetadata

    metadata = VideoMetadata(total_num_frames=40, fps=10)
    mine = ours(**options)(video, video_metadata=[metadata], return_tensors="pt", return_metadata=True)
    metadata = VideoMetadata(total_num_frames=40, fps=10)
    theirs = official(**options)(video, video_metadata=[metadata], return_tensors="pt", return_metadata=True)
    assert torch.equal(mine["pixel_values_videos"], theirs["pixel_values_videos"])
    assert list(mine["video_metadata"][0].frames_indices) == list(theirs["video_metadata"][0].frames_indices)
    assert mine["pixel_values_videos"].shape[0] == 5


def test_the_torch_processor_by_hand():
    """A frame at the patch budget keeps its size; a smaller one is scaled up to the largest multiple of k * patch
    within it and padded; black is 0, every value is pixel / 255, patches row-major in (row, column, channel)."""
    (cls,) = torch_video_processors()
    processor = cls(**TINY_PROCESSOR)  # 70 soft tokens: 280 patches of 4 x 4, sides multiples of 8
    video = _pattern(2, 56, 80)  # 56 x 80 = 280 patches: kept as it is
    out = processor(video, return_tensors="pt")
    pixels, positions = out["pixel_values_videos"], out["video_position_ids"]
    assert pixels.shape == (2, 280, 48) and out["num_soft_tokens_per_video"].tolist() == [70]
    frame, row, col = 1, 3, 5  # patch (row 3, column 5) of frame 1
    patch = torch.from_numpy(video[frame, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4, :]).float() / 255
    torch.testing.assert_close(pixels[frame, row * 20 + col], patch.reshape(-1), rtol=0, atol=1e-6)
    assert positions[frame, row * 20 + col].tolist() == [col, row]  # (x, y)
    # a constant grey 48 x 64 video: resized to 56 x 72 (252 patches), padded to 280; black stays 0
    grey = np.full((1, 48, 64, 3), 128, np.uint8)
    grey[..., 0] = 0
    out = processor(grey, return_tensors="pt")
    pixels, positions = out["pixel_values_videos"][0], out["video_position_ids"][0]
    assert out["num_soft_tokens_per_video"].tolist() == [63]  # 7 x 9 tokens
    assert torch.equal(pixels[:252, 0::3], torch.zeros(252, 16))
    torch.testing.assert_close(pixels[:252, 1::3], torch.full((252, 16), 128 / 255))
    assert torch.equal(pixels[252:], torch.zeros(28, 48)) and (positions[252:] == -1).all()
    assert positions[:252, 0].max() == 17 and positions[:252, 1].max() == 13  # 18 columns, 14 rows


# ------------------------------------------------------------------------------------------------ black frame
@pytest.mark.parametrize("size", [(64, 64), (48, 64), (56, 80)])
def test_the_blank_frame_is_a_black_video_through_the_models_own_video_path(model, size):
    """A black video made by the processor (padded to its patch budget) through `get_video_features` gives the
    adapter's blank frame at that video's frame size."""
    (cls,) = torch_video_processors()
    video = np.zeros((2, *size, 3), np.uint8)
    out = cls(**TINY_PROCESSOR)(video, return_tensors="pt")
    assert not out["pixel_values_videos"].any()  # a black pixel is 0 after the processor
    inputs = {"input_ids": torch.tensor([[5]]), "video_position_ids": out["video_position_ids"]}
    frame = [BOI] + [VIDEO] * int(out["num_soft_tokens_per_video"][0]) + [EOI, 5]
    ids = torch.tensor([frame * 2])
    layout = locate_gemma4(model, _call({**inputs, "input_ids": ids}), None)
    with torch.no_grad():
        real = model.model.get_video_features(
            out["pixel_values_videos"], out["video_position_ids"], num_frames_per_video=torch.tensor([2])
        ).pooler_output[0]
    blank = blank_frame_gemma4(model, layout, None)
    h, w = layout.grid
    assert blank.shape == (h * w, model.config.text_config.hidden_size)
    torch.testing.assert_close(blank, real[: h * w], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blank, real[h * w :], atol=1e-5, rtol=1e-5)  # the second frame is the same
    assert not torch.allclose(blank[0], blank[1])  # positions matter: the frame size has to be right


def test_the_blank_frame_needs_the_frame_size(model):
    layout = VisualLayout(positions=torch.arange(6)[None], frame_ids=torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(sp.InputError, match="frame size"):
        blank_frame_gemma4(model, layout, None)
    assert FAMILIES[FAMILY].blank_frame_needs_grid


# ------------------------------------------------------------------------------------------------ vision FLOPs
@pytest.mark.parametrize("grid", [(4, 4), (2, 3)])
def test_vision_flops_match_the_counter(model, grid):
    inputs = _video_inputs(grid, frames=3, model=model)
    counter = flop_counter_mode()  # FlopCounterMode, counting CPU attention too
    with counter, torch.no_grad():
        model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_position_ids"], num_frames_per_video=torch.tensor([3])
        )
    k = model.config.vision_config.pooling_kernel_size
    expected = vision_flops(model, video_grid_thw=(3, grid[0] * k, grid[1] * k))
    assert counter.get_total_flops() == expected == vision_flops_gemma4(model.config, 0, (3, grid[0] * k, grid[1] * k))


def test_vision_flops_need_the_frame_size(model):
    with pytest.raises(sp.ConfigError, match="video_grid_thw"):
        vision_flops(model, num_frames=4)


# ------------------------------------------------------------------------------------------------ pruning
def _keep_index(record, seq_len: int) -> torch.Tensor:
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


@torch.no_grad()
def _reference(model, inputs: dict, keep: torch.Tensor, layer: int) -> torch.Tensor:
    """Logits of the kept positions of one unpadded sample, written by hand: the decoder's inputs of an unpruned
    call (embeddings with the video features, per-layer token inputs), layers < `layer` on every token, layers >=
    `layer` on the kept ones in original positions: RoPE, sliding windows and the frames' bidirectional blocks
    (sliding layers only) in original positions, each layer's per-layer input at its rows, and the KV-sharing
    layers reading what their source layer computed on the rows it ran."""
    decoder = model.model.language_model
    captured = {}
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    finally:
        hook.remove()
    embeds = captured["inputs_embeds"]
    per_layer = decoder.project_per_layer_inputs(embeds, captured["per_layer_inputs"])
    config = decoder.config
    seq = embeds.shape[1]
    positions = torch.arange(seq)[None]
    rope = {kind: decoder.rotary_emb(embeds, positions, kind) for kind in set(config.layer_types)}
    video = inputs["mm_token_type_ids"][0] == 2
    starts = video & ~torch.nn.functional.pad(video[:-1], (1, 0), value=False)
    block = torch.where(video, starts.long().cumsum(0), -1)  # frame of each token, -1 for text

    def mask(rows: torch.Tensor, kind: str) -> torch.Tensor:
        q, kv = rows[:, None], rows[None, :]
        allowed = kv <= q
        if kind == "sliding_attention":
            same = (block[rows][:, None] == block[rows][None, :]) & (block[rows][:, None] >= 0)
            allowed = (allowed | same) & (kv > q - config.sliding_window)
        return torch.zeros(rows.numel(), rows.numel()).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]

    hidden, rows, shared_kv = embeds, torch.arange(seq), {}
    for index, layer_module in enumerate(decoder.layers):
        if index == layer:
            rows = keep.view(-1)
            hidden = hidden[:, rows]
        kind = config.layer_types[index]
        cos, sin = rope[kind]
        hidden = layer_module(
            hidden,
            per_layer[:, rows, index],
            shared_kv_states=shared_kv,
            position_embeddings=(cos[:, rows], sin[:, rows]),
            attention_mask=mask(rows, kind),
        )
    return model.lm_head(decoder.norm(hidden))


def test_the_reference_is_the_model_when_nothing_is_pruned(shared):
    inputs = _video_inputs((3, 3), frames=3, model=shared)
    with torch.no_grad():
        logits = shared(**inputs).logits
    full = torch.arange(inputs["input_ids"].shape[1])
    torch.testing.assert_close(_reference(shared, inputs, full, 2), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_layers", [4, 6])
@pytest.mark.parametrize("method", ["fastv", "sharp"])
def test_identity_at_full_retention(num_layers, method, model, shared):
    m = model if num_layers == 4 else shared
    inputs = tiny_inputs(m, [3, 6], [5, 2], padding_side="left")
    with torch.no_grad():
        ref_logits = m(**inputs).logits
        ref_tokens = m.generate(**inputs, max_new_tokens=4, do_sample=False)
    config = sp.PruneConfig(method=method, retention=1.0, layer=2)
    if method == "sharp":
        config = sp.PruneConfig(method=method, retention=1.0, layer=2, segm=False)
    with sp.apply(m, config) as handle, torch.no_grad():
        logits = m(**inputs).logits
        tokens = m.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert handle.adapter.name == FAMILY
    assert torch.equal(logits, ref_logits) and torch.equal(tokens, ref_tokens)
    assert handle.last.num_visual == [64, 64] and handle.last.grid == (4, 4)


@pytest.mark.parametrize("layer", [1, 2])
@pytest.mark.parametrize("method", ["fastv", "random"])
def test_pruned_forward_matches_the_reference_with_shared_kv(shared, layer, method):
    inputs = tiny_inputs(shared, [5], [6])
    with sp.apply(shared, method=method, retention=0.25, layer=layer) as handle, torch.no_grad():
        pruned = shared(**inputs).logits
    record = handle.last
    assert record.budget == [16] and record.num_visual == [64]
    keep = _keep_index(record, inputs["input_ids"].shape[1])
    torch.testing.assert_close(pruned, _reference(shared, inputs, keep, layer), atol=1e-5, rtol=1e-5)


def test_pruned_forward_matches_the_reference_on_the_battery_stack(model):
    inputs = tiny_inputs(model, [5], [6])
    with sp.apply(model, method="fastv", retention=0.25, layer=3) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    torch.testing.assert_close(pruned, _reference(model, inputs, keep, 3), atol=1e-5, rtol=1e-5)


def test_generate_continues_from_the_pruned_cache(shared):
    """Greedy decoding from the pruned cache equals greedy decoding of the kept-sequence reference, the new tokens
    text (no bidirectional block) and the KV-sharing layers reading their sources' kept keys."""
    inputs = tiny_inputs(shared, [4], [5])
    seq_len, steps, layer = inputs["input_ids"].shape[1], 4, 2
    with sp.apply(shared, method="fastv", retention=0.25, layer=layer) as handle, torch.no_grad():
        pruned = shared(**inputs).logits
        generated = shared.generate(**inputs, max_new_tokens=steps, do_sample=False)
    keep = _keep_index(handle.last, seq_len)
    assert int(generated[0, seq_len]) == int(pruned[0, -1].argmax())
    tokens = inputs["input_ids"]
    for _ in range(steps):
        pad = tokens.shape[1] - seq_len
        extended = dict(
            inputs,
            input_ids=tokens,
            attention_mask=torch.ones_like(tokens),
            mm_token_type_ids=torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, pad)),
        )
        full_keep = torch.cat([keep, torch.arange(seq_len, tokens.shape[1])])
        logits = _reference(shared, extended, full_keep, layer)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_sharp_with_posc_prunes_a_batch_and_generates(shared):
    inputs = tiny_inputs(shared, [3, 6], [5, 2], padding_side="left")
    config = sp.PruneConfig(method="sharp", retention=0.3, layer=2, record_scores=True)
    with sp.apply(shared, config) as handle, torch.no_grad():
        logits = shared(**inputs).logits
        first = handle.last
        tokens = shared.generate(**inputs, max_new_tokens=3, do_sample=False)
        second = handle.last
    assert first.budget == [19, 19] and first.grid == (4, 4)
    assert torch.isfinite(logits).all() and tokens.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert not torch.allclose(first.prior[0], torch.zeros_like(first.prior[0]))
    for a, b in zip(first.keep_positions, second.keep_positions, strict=True):
        assert torch.equal(a, b)  # generate's prefill (no video_position_ids) made the same plan


def test_k_after_a_shared_kv_source_is_refused(shared):
    with pytest.raises(sp.ConfigError, match="reuses the keys and values"):
        sp.apply(shared, method="random", retention=0.3, layer=3)
    assert not any(layer._forward_pre_hooks for layer in shared.model.language_model.layers)


def test_a_video_of_non_square_frames_prunes(model):
    inputs = _video_inputs((2, 3), frames=4, model=model)
    with sp.apply(model, method="fastv", retention=0.5, layer=2) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    assert handle.last.num_visual == [24] and handle.last.budget == [12]
    keep = _keep_index(handle.last, inputs["input_ids"].shape[1])
    torch.testing.assert_close(pruned, _reference(model, inputs, keep, 2), atol=1e-5, rtol=1e-5)


def test_tiny_video_sizes_other_than_the_default(model):
    inputs = tiny_inputs(model, [2], [3], video=TinyVideo(frames=2, grid=3))
    layout = locate_gemma4(model, _call(inputs), None)
    assert layout.grid == (3, 3) and layout.num_visual == 18
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_posc_under_generate_with_non_square_frames_says_why_it_cannot_know_the_frame_size(model):
    """`generate` drops `video_position_ids` before the prefill: a non-square frame's size is then unknown, and
    PosC's black frame cannot be built. The refusal says so (not "different frame sizes" alone) before any layer."""
    inputs = _video_inputs((2, 3), frames=3, model=model)
    with sp.apply(model, method="sharp", retention=0.5, layer=2) as handle, torch.no_grad():
        model(**inputs)  # a plain forward carries the position ids: the size is known
        assert handle.last.grid == (2, 3)
        with pytest.raises(sp.InputError, match="square aspect ratio"):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
    with sp.apply(model, method="sharp", retention=0.5, layer=2, posc=False), torch.no_grad():
        assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


def test_the_pre_llm_stage_is_refused_on_per_layer_inputs(model):
    """The pre-LLM stage shortens the decoder's input, and would leave the per-layer inputs at full length."""
    with pytest.raises(sp.ConfigError, match="per-layer input.*pre=None"):
        sp.apply(model, method="sharp", retention=0.3, layer=2, pre="temporal_merge")
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)


@pytest.fixture(scope="module")
def unshared():
    """Six layers without KV sharing (full, sliding, sliding, full, sliding, full): K = 4 scores at layer 3, so the
    blank pass reruns three layers whose per-layer inputs depend on the frames' embeddings."""
    from sharp_prune.models import tiny
    from sharp_prune.models.gemma4 import draw_patch_positions, tiny_gemma4_config

    build = tiny.builder("Gemma4ForConditionalGeneration", lambda n: tiny_gemma4_config(n, shared_kv_layers=0))
    return draw_patch_positions(build(6, "sdpa", torch.float32, 0), 0)


@pytest.mark.parametrize("layer", [2, 4])
def test_posc_prior_is_the_scores_of_a_black_video_per_layer_inputs_included(unshared, layer):
    """PosC's blank pass is the model on the same prompt with every frame black: its prior equals the scores a real
    forward on black pixels reads. Layers below the scoring layer add per-layer inputs projected from the input
    embeddings: the blank pass must project the black frames' own, or the prior differs (K = 4)."""
    inputs = tiny_inputs(unshared, [5], [6])
    black = dict(inputs, pixel_values_videos=torch.zeros_like(inputs["pixel_values_videos"]))
    config = sp.PruneConfig(method="sharp", retention=0.25, layer=layer, segm=False, regd=False, record_scores=True)
    with sp.apply(unshared, config) as handle, torch.no_grad():
        unshared(**inputs)
        assert handle.score_layer == (3 if layer == 4 else 0)
        prior = handle.last.prior[0]
        unshared(**black)
        black_scores = handle.last.raw_scores[0]
    torch.testing.assert_close(prior, black_scores, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ checkpoint
# The tiny checkpoint (`tiny_gemma4_checkpoint`, 6 layers: the last two share KV): a 64 x 48 (4:3) video becomes
# 72 x 56 frames of 9 x 7 = 63 soft tokens (max_soft_tokens 70, sides multiples of 8), a square one 64 x 64 frames of
# 8 x 8 = 64. `sharp-prune run` and lmms-eval on it: tests/test_run.py, tests/test_lmms_cli.py.
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from sharp_prune.testing import tiny_gemma4_checkpoint

    return tiny_gemma4_checkpoint(tmp_path_factory.mktemp("gemma4") / "ckpt", num_layers=6)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    pytest.importorskip("av")
    from sharp_prune.testing import synthetic_video

    folder = tmp_path_factory.mktemp("gemma4-videos")
    return {
        "wide": synthetic_video(folder / "wide.mp4", num_frames=36),
        "square": synthetic_video(folder / "square.mp4", num_frames=36, width=48, height=48),
    }


def test_the_tiny_checkpoint_loads_with_its_processor(checkpoint):
    """Without torchvision: Gemma4Processor with its four parts (the audio feature extractor included) and the
    torch-only video processor; the tokenizer has Gemma 4's special tokens as attributes, the config their ids."""
    from transformers.utils import is_torchvision_available

    from sharp_prune.models.loading import load_model

    model, processor = load_model(checkpoint, device="cpu")
    assert type(model).__name__ == "Gemma4ForConditionalGeneration" and resolve_adapter(model) is FAMILIES[FAMILY]
    assert type(processor).__name__ == "Gemma4Processor"
    assert type(processor.feature_extractor).__name__ == "Gemma4AudioFeatureExtractor"
    if not is_torchvision_available():
        assert type(processor.video_processor) is torch_video_processors()[0]
    tokenizer, config = processor.tokenizer, model.config
    ids = {
        "boi_token_id": tokenizer.convert_tokens_to_ids(tokenizer.boi_token),
        "eoi_token_id": tokenizer.convert_tokens_to_ids(tokenizer.eoi_token),
        "image_token_id": tokenizer.image_token_id,
        "video_token_id": processor.video_token_id,
        "audio_token_id": tokenizer.audio_token_id,
        "boa_token_id": tokenizer.convert_tokens_to_ids(tokenizer.boa_token),
        "eoa_token_index": tokenizer.convert_tokens_to_ids(tokenizer.eoa_token),
    }
    assert {name: getattr(config, name) for name in ids} == ids
    assert len(set(ids.values())) == len(ids) and min(ids.values()) >= 49152  # new tokens after SmolLM2's
    text = config.text_config
    assert text.vocab_size == text.vocab_size_per_layer_input == len(tokenizer)
    assert text.use_bidirectional_attention == "vision" and text.hidden_size_per_layer_input == 8
    assert text.num_kv_shared_layers == 2 and not config.tie_word_embeddings
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize(("video", "grid"), [("wide", (7, 9)), ("square", (8, 8))])
def test_the_checkpoints_processor_writes_the_layout_the_adapter_reads(checkpoint, clips, video, grid):
    """Per frame its mm:ss timestamp, <boi>, the frame's soft tokens, <eoi>; under `generate` (no
    `video_position_ids`) only the square frame's size is known."""
    from sharp_prune.models.loading import build_inputs, load_processor
    from sharp_prune.video import read_video

    processor = load_processor(checkpoint)
    clip = read_video(clips[video], 4)  # frames 4, 13, 22, 31 of 36 at 10 fps
    inputs = build_inputs(processor, clip, "What moves?")
    per_frame = grid[0] * grid[1]
    text = processor.decode(inputs["input_ids"][0])
    frames = [
        f"{stamp} <|image>" + "<|video|>" * per_frame + "<image|>" for stamp in ("00:00", "00:01", "00:02", "00:03")
    ]
    assert " ".join(frames) in text
    assert text.startswith("<|im_start|><|turn>user\n") and text.endswith("What moves?<turn|>\n<|turn>model\n")
    assert inputs["pixel_values_videos"].shape == (4, 280, 48) and inputs["num_frames_per_video"].tolist() == [4]
    assert (inputs["mm_token_type_ids"] == 2).sum() == 4 * per_frame
    from sharp_prune.models.loading import load_config

    model = types.SimpleNamespace(config=load_config(checkpoint))
    layout = locate_gemma4(model, _call(dict(inputs)), None)
    assert layout.grid == grid and layout.num_visual == 4 * per_frame and layout.frames == 4
    assert locate_gemma4(model, _call(dict(inputs), with_positions=False), None).grid == (
        grid if grid[0] == grid[1] else None
    )


def test_the_sharp_gemma4_wrapper_decodes_video_files_as_transformers_would(checkpoint, clips):
    """lmms-eval's `gemma4` hands video files to `apply_chat_template` with ``videos_kwargs`` (num_frames,
    do_sample_frames); transformers would decode them with torchcodec. The pruned wrapper's processor decodes the
    frames the video processor samples with PyAV and passes their indices and rate: the same inputs, timestamps
    included, as transformers sampling the whole decoded video itself."""
    from transformers.video_utils import VideoMetadata

    from sharp_prune.integrations.lmms_eval.mixin import SharpPruneMixin, _SamplingEvalProcessor
    from sharp_prune.models.loading import load_processor
    from sharp_prune.video import read_frames

    processor = load_processor(checkpoint)
    owner = types.SimpleNamespace(processor=processor, prune_stats=None)
    wrapped = _SamplingEvalProcessor(processor, functools.partial(SharpPruneMixin._read_sampled_video, owner))
    path = str(clips["wide"])
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "video", "video": path}, {"type": "text", "text": "What moves?"}]},
    ]
    videos_kwargs = {"max_soft_tokens": 70, "num_frames": 5, "do_sample_frames": True}
    options = {"text_kwargs": {"padding": True, "pad_to_multiple_of": 8}, "videos_kwargs": videos_kwargs}
    got = wrapped.apply_chat_template(
        [messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=options,
    )
    assert videos_kwargs["do_sample_frames"] is True, "the caller's options are not changed"
    prompt = processor.apply_chat_template([messages], add_generation_prompt=True, tokenize=False)
    expected = processor(
        text=prompt,
        videos=[read_frames(path, 36)],
        video_metadata=[VideoMetadata(total_num_frames=36, fps=10.0)],
        return_tensors="pt",
        text_kwargs=options["text_kwargs"],
        videos_kwargs=videos_kwargs,
    )
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["pixel_values_videos"], expected["pixel_values_videos"])
    text = processor.decode(got["input_ids"][0])
    assert [text.count(f"{stamp} <|image>") for stamp in ("00:00", "00:01", "00:02")] == [2, 1, 2]  # 0 7 14 21 28


def test_a_padded_batch_generates_with_shared_kv_as_its_samples_do_alone(shared):
    """Left padding makes the decode-step masks tensors (unpadded, transformers passes none to full-attention layers),
    and the engine checks a full-attention layer's cut mask against what its cache held before the step plus the
    new tokens. A KV-sharing layer (5: source 3) reads its source's cache, which already holds this step's tokens:
    they must not count twice. lmms-eval's gemma4 wrapper pads every prompt to a multiple of 8 tokens."""
    inputs = tiny_inputs(shared, [3, 6], [5, 5], padding_side="left")
    config = sp.PruneConfig(method="sharp", retention=0.3, layer=2, posc=False)
    with sp.apply(shared, config), torch.no_grad():
        tokens = shared.generate(**inputs, max_new_tokens=3, do_sample=False)
        singles = [shared.generate(**sample_of(inputs, i), max_new_tokens=3, do_sample=False) for i in range(2)]
    assert tokens.shape == (2, inputs["input_ids"].shape[1] + 3)
    for i, single in enumerate(singles):
        assert torch.equal(tokens[i, -3:], single[0, -3:]), i
