"""VideoLLaMA3: frames as timestamped runs of video tokens, compressed frames, generate, the black frame, FLOPs.

The shared battery (identity, drop equivalence, batches, methods, ...) runs this family through `TINY_FAMILIES`
on uncompressed frames; the tests below add the processor's own layout (timestamps, Differential Frame Pruning,
several videos) and the battery checks whose family lists are fixed elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits
from test_posc_regd import test_blank_pass_runs_only_the_first_k_layers as blank_pass_runs_only_the_first_k_layers
from test_silently_wrong import (
    test_a_prompt_ending_in_video_tokens_keeps_its_last_token as a_prompt_ending_in_video_keeps_its_last_token,
)
from transformers import VideoLlama3ForConditionalGeneration

import sharp_prune as sp
from sharp_prune.hf_protocol import read_model_call
from sharp_prune.measure.flop_counter import measure_prefill_flops
from sharp_prune.measure.flops import vision_flops
from sharp_prune.models import FAMILIES
from sharp_prune.models.tiny import PAD_ID, VIDEO_TOKEN_ID, finish
from sharp_prune.models.video_llama_3 import (
    VIDEO_MERGE_SIZE,
    locate_video_llama_3,
    tiny_video_llama_3_config,
    video_tokens,
)
from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model

FAMILY = "video_llama_3"
ENTRY = FAMILIES[FAMILY]
LAYER = 2


def _keep_index(record: sp.PruneRecord, seq_len: int) -> torch.Tensor:
    """Text and kept video positions, from the record."""
    visual, kept = set(record.visual_positions[0].tolist()), set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


def _compressed_inputs(model: VideoLlama3ForConditionalGeneration, kept: list[int], seed: int = 0) -> dict:
    """One sample: text, one video of len(kept) frames of 4 x 4 merged tokens of which frame f keeps kept[f]
    (the video processor's Differential Frame Pruning: `video_compression_mask`), text."""
    gen = torch.Generator().manual_seed(seed)
    frames, per_frame = len(kept), 16
    mask = torch.zeros(frames, per_frame, dtype=torch.bool)
    for f, count in enumerate(kept):
        mask[f, torch.randperm(per_frame, generator=gen)[:count]] = True
    ids = torch.cat([torch.randint(10, 200, (4,), generator=gen), video_tokens(kept), torch.randint(10, 200, (5,))])
    side = 4 * VIDEO_MERGE_SIZE
    patch = model.config.vision_config.patch_size
    return {
        "input_ids": ids[None],
        "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long),
        "pixel_values_videos": torch.randn(frames * side * side, 3 * patch * patch, generator=gen),
        "video_grid_thw": torch.tensor([[frames, side, side]]),
        "video_merge_sizes": torch.tensor([VIDEO_MERGE_SIZE]),
        "video_compression_mask": mask.flatten(),
    }


# ------------------------------------------------------------------ the battery's checks with fixed family lists
def test_blank_pass_runs_only_the_first_k_layers():
    blank_pass_runs_only_the_first_k_layers(FAMILY)


def test_a_prompt_ending_in_video_tokens_keeps_its_last_token():
    a_prompt_ending_in_video_keeps_its_last_token(FAMILY)


# ------------------------------------------------------------------------------------------- the token layout
def test_processor_layout_with_two_compressed_videos():
    """The processor's own prompt code (`VideoLlama3Processor.replace_video_token`, timestamps and commas) on
    two videos with compressed frames, tokenised: one frame per run, frames counting on across the videos."""
    from types import SimpleNamespace

    from transformers import VideoLlama3Processor
    from transformers.video_utils import VideoMetadata

    from sharp_prune.testing import _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer(None, ["<|image_pad|>", "<|video_pad|>"])
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    kept = [[16, 3, 1], [16, 7]]  # per video, the tokens each frame keeps
    masks = []
    for video in kept:
        for count in video:
            masks.append(torch.arange(16) < count)
    video_inputs = {
        "video_grid_thw": torch.tensor([[3, 8, 8], [2, 8, 8]]),
        "video_merge_sizes": torch.tensor([2, 2]),
        "video_compression_mask": torch.cat(masks),
        "video_metadata": [
            VideoMetadata(total_num_frames=30, fps=10.0, frames_indices=[0, 10, 20]),
            VideoMetadata(total_num_frames=20, fps=10.0, frames_indices=[0, 15]),
        ],
    }
    fake = SimpleNamespace(video_token="<|video_pad|>")
    text = "<|im_start|>user\n{}\n{}\nWhat changed?<|im_end|>\n<|im_start|>assistant\n".format(
        *(VideoLlama3Processor.replace_video_token(fake, video_inputs, v) for v in range(2))
    )
    assert "Time 1.0s:" in text and "Time 1.5s:" in text
    ids = tokenizer(text, return_tensors="pt").input_ids
    model = _model(vocab_size=len(tokenizer), video_token_id=video_id)
    layout = locate_video_llama_3(model, read_model_call([], (), {"input_ids": ids}), None)
    expected = [f for f, count in enumerate([c for video in kept for c in video]) for _ in range(count)]
    assert layout.frame_ids[0].tolist() == expected and layout.num_frames == 5
    assert layout.positions[0].tolist() == (ids[0] == video_id).nonzero().flatten().tolist()
    assert layout.grid is None  # compressed frames are no rasters


def test_compressed_frames_prune_like_the_reference():
    model = tiny_model(FAMILY)
    inputs = _compressed_inputs(model, [16, 5, 1, 9])
    with sp.apply(model, method="fastv", retention=0.25, layer=LAYER) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    record = handle.last
    assert record.num_visual == [31] and record.budget == [8]
    assert record.frame_ids[0].bincount().tolist() == [16, 5, 1, 9]
    keep = _keep_index(record, inputs["input_ids"].shape[1])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, LAYER)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [sp.PruneConfig(method="sharp", retention=0.3), sp.PruneConfig(method="uniform")])
def test_generate_prunes_its_prefill_like_the_forward(config):
    """`generate` encodes the video before the prefill and passes no pixels or grids (it keeps the compression
    mask): the frames follow from the runs alone, the plan equals the forward's, and the first token is the
    forward's argmax."""
    model = tiny_model(FAMILY)
    inputs = _compressed_inputs(model, [16, 5, 1, 9], seed=3)
    with sp.apply(model, config) as handle, torch.no_grad():
        logits = model(**inputs).logits
        forward = handle.last
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        generated = handle.last
    assert generated.num_visual == forward.num_visual == [31]
    assert torch.equal(generated.keep_positions[0], forward.keep_positions[0])
    assert torch.equal(generated.frame_ids[0], forward.frame_ids[0])
    assert int(tokens[0, inputs["input_ids"].shape[1]]) == int(logits[0, -1].argmax())


def test_frames_without_timestamps_are_refused_before_any_layer():
    """A video written as one run (no timestamps between frames) would read as one long frame: with the grids
    at hand, the mismatch is refused."""
    model = tiny_model(FAMILY)
    inputs = tiny_inputs(model, [3], [4])
    ids = inputs["input_ids"][0]
    video = ids == VIDEO_TOKEN_ID
    first, last = int(video.nonzero()[0]), int(video.nonzero()[-1])
    glued = torch.cat([ids[:first], ids[first : last + 1][video[first : last + 1]], ids[last + 1 :]])[None]
    inputs = dict(inputs, input_ids=glued, attention_mask=torch.ones_like(glued))
    calls = []
    model.model.language_model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with sp.apply(model, method="fastv", retention=0.2), pytest.raises(sp.InputError, match="4 frame"):
        model(**inputs)
    assert calls == []


def test_batch_of_two_videos_per_sample():
    """Two videos in each of two samples, left padded: the batch equals the samples run one at a time."""
    model = tiny_model(FAMILY)
    gen = torch.Generator().manual_seed(0)
    rows = [
        torch.cat(
            [
                torch.tensor([20, 21]),
                video_tokens([4, 4]),
                torch.tensor([22]),
                video_tokens([4]),
                torch.tensor([23, 24]),
            ]
        ),
        torch.cat(
            [torch.tensor([30]), video_tokens([4, 4]), torch.tensor([31, 32]), video_tokens([4]), torch.tensor([33])]
        ),
    ]
    width = max(r.numel() for r in rows)
    ids = torch.full((2, width), PAD_ID)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.numel() :], mask[i, width - r.numel() :] = r, 1
    patch = model.config.vision_config.patch_size
    grids = torch.tensor([[2, 4, 4], [1, 4, 4]] * 2)  # 2 x 2 merged tokens a frame
    pixels = torch.randn(int(grids.prod(dim=1).sum()), 3 * patch * patch, generator=gen)
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, video_grid_thw=grids)
    batch["video_merge_sizes"] = torch.full((4,), VIDEO_MERGE_SIZE)
    config = sp.PruneConfig(method="sharp", retention=0.4, layer=LAYER)
    with sp.apply(model, config) as handle, torch.no_grad():
        together = model(**batch).logits
        assert handle.last.frame_ids[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        for i in range(2):
            real = mask[i].bool()
            rows_of = slice(i * 48, (i + 1) * 48)
            single = dict(
                input_ids=ids[i, real][None],
                attention_mask=mask[i, real][None],
                pixel_values_videos=pixels[rows_of],
                video_grid_thw=grids[2 * i : 2 * i + 2],
                video_merge_sizes=batch["video_merge_sizes"][:2],
            )
            alone = model(**single).logits  # left padding: the sample's kept tokens end the batch row
            torch.testing.assert_close(together[i, -alone.shape[1] :], alone[0], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ black frame, FLOPs
def _model(**overrides) -> VideoLlama3ForConditionalGeneration:
    """The tiny model (4 layers, sdpa, seed 0) with config fields replaced by `overrides`."""
    torch.manual_seed(0)
    return finish(VideoLlama3ForConditionalGeneration(tiny_video_llama_3_config(4, **overrides)), "sdpa", torch.float32)


def test_blank_frame_is_every_token_of_a_black_frame():
    """One patch stands for a black frame of any size: the ViT has no absolute positions, so every token of a
    constant frame is the same vector."""
    model = tiny_model(FAMILY)
    layout = locate_video_llama_3(model, read_model_call([], (), tiny_inputs(model, [3], [4])), None)
    blank = ENTRY.blank_frame(model, layout, None)
    assert blank.shape == (1, model.config.text_config.hidden_size)
    patch = model.config.vision_config.patch_size
    black = torch.tensor(-1.0).expand(8 * 6, 3 * patch * patch)  # (0 - 0.5) / 0.5, a 8 x 6 patch frame
    with torch.no_grad():
        frame = model.get_video_features(
            pixel_values_videos=black.contiguous(),
            video_grid_thw=torch.tensor([[1, 8, 6]]),
            video_merge_sizes=torch.tensor([2]),
        ).pooler_output[0]
    assert frame.shape[0] == 12
    torch.testing.assert_close(frame, blank.expand_as(frame), atol=1e-5, rtol=1e-5)


def test_vision_flops_match_the_counter():
    model = tiny_model(FAMILY)
    inputs = tiny_inputs(model, [3, 5], [4, 2], video=TinyVideo(frames=3, grid=3))
    measured = measure_prefill_flops(model, inputs)
    assert measured.total - measured.text == 2 * vision_flops(model, video_grid_thw=(3, 6, 6))
    with pytest.raises(sp.ConfigError, match="video_grid_thw"):
        vision_flops(model, num_frames=3)
