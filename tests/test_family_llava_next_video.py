"""LLaVA-NeXT-Video: the processor's token layout (several videos, no newline), generate, the black frame, FLOPs.

The shared battery (identity, drop equivalence, batches, methods, ...) runs this family through `TINY_FAMILIES`;
the tests below are the ones whose family lists are fixed elsewhere, and what is particular to this family.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits
from test_posc_regd import test_blank_pass_runs_only_the_first_k_layers as blank_pass_runs_only_the_first_k_layers
from test_segm import test_record_carries_frame_similarity_and_grid as record_carries_frame_similarity_and_grid
from test_silently_wrong import (
    test_a_prompt_ending_in_video_tokens_keeps_its_last_token as a_prompt_ending_in_video_keeps_its_last_token,
)
from transformers import LlavaNextVideoForConditionalGeneration

import sharp_prune as sp
from sharp_prune.hf_protocol import read_model_call
from sharp_prune.measure.flop_counter import measure_prefill_flops
from sharp_prune.measure.flops import vision_flops
from sharp_prune.models import FAMILIES
from sharp_prune.models.llava_next_video import locate_llava_next_video, tiny_llava_next_video_config
from sharp_prune.models.tiny import IMAGE_TOKEN_ID, finish
from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model

FAMILY = "llava_next_video"
ENTRY = FAMILIES[FAMILY]
LAYER = 2


def _model(**overrides) -> LlavaNextVideoForConditionalGeneration:
    """The tiny model (4 layers, sdpa, seed 0) with config fields replaced by `overrides`."""
    torch.manual_seed(0)
    return finish(
        LlavaNextVideoForConditionalGeneration(tiny_llava_next_video_config(4, **overrides)), "sdpa", torch.float32
    )


# ------------------------------------------------------------------ the battery's checks with fixed family lists
def test_blank_pass_runs_only_the_first_k_layers():
    blank_pass_runs_only_the_first_k_layers(FAMILY)


def test_record_carries_frame_similarity_and_grid():
    record_carries_frame_similarity_and_grid(FAMILY)


def test_a_prompt_ending_in_video_tokens_keeps_its_last_token():
    """No newline after the video (unlike LLaVA-OneVision): the prompt's last token can be a video token."""
    a_prompt_ending_in_video_keeps_its_last_token(FAMILY)


# ------------------------------------------------------------------------------------------- the token layout
def _processor():
    """The real LlavaNextVideoProcessor (SmolLM2's tokenizer + <image>, <video>; 32 x 32 frames, patch 4)."""
    from transformers import LlavaNextVideoProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    from sharp_prune.models.processors import accepting_processor_class, torch_video_processor_class
    from sharp_prune.testing import _smollm2_tokenizer

    tokenizer = _smollm2_tokenizer(None, ["<image>", "<video>"])
    pixels = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return accepting_processor_class(LlavaNextVideoProcessor)(
        video_processor=torch_video_processor_class(LlavaNextVideoVideoProcessor)(**pixels),
        image_processor=LlavaNextImageProcessorPil(image_grid_pinpoints=[[32, 32]], **pixels),
        tokenizer=tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
    )


def test_processor_layout_with_two_videos_is_located_and_pruned():
    """Two 3-frame videos in one prompt, as the processor expands them: 2 x 3 x 16 tokens in two runs; frames
    count on across the videos, and the pruned forward equals the reference."""
    processor = _processor()
    tokenizer = processor.tokenizer
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    model = _model(
        vocab_size=len(tokenizer),
        video_token_index=video_id,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    gen = torch.Generator().manual_seed(0)
    videos = [torch.randint(0, 256, (3, 40, 48, 3), dtype=torch.uint8, generator=gen).numpy() for _ in range(2)]
    text = "USER: <video> first, then <video> second. What changed? ASSISTANT:"
    inputs = dict(processor(text=[text], videos=videos, return_tensors="pt"))
    assert inputs["pixel_values_videos"].shape == (2, 3, 3, 32, 32)
    positions = (inputs["input_ids"][0] == video_id).nonzero().flatten()
    assert positions.numel() == 96 and int((positions.diff() != 1).sum()) == 1  # two runs, text between

    layout = locate_llava_next_video(model, read_model_call([], (), inputs), None)
    assert layout.positions[0].tolist() == positions.tolist()
    assert layout.frame_ids[0].tolist() == torch.arange(6).repeat_interleave(16).tolist()
    assert layout.grid == (4, 4) and layout.num_frames == 6

    with sp.apply(model, method="fastv", retention=0.25, layer=LAYER) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    record = handle.last
    assert record.num_visual == [96] and record.budget == [24]
    visual, kept = set(positions.tolist()), set(record.keep_positions[0].tolist())
    keep = torch.tensor([p for p in range(record.seq_len) if p not in visual or p in kept])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, LAYER)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_a_saved_processor_loads_and_expands_videos_the_same(tmp_path):
    """`run`'s loader rebuilds the checkpoint's processor (torch-only video processor where torchvision is
    missing) and it gives the same tokens and pixels."""
    from sharp_prune.models.loading import load_processor

    processor = _processor()
    _model(vocab_size=len(processor.tokenizer)).config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    videos = [
        torch.randint(0, 256, (2, 36, 50, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy()
    ]
    text = ["USER: <video> What happens? ASSISTANT:"]
    expected, got = processor(text=text, videos=videos), loaded(text=text, videos=videos)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    torch.testing.assert_close(got["pixel_values_videos"], expected["pixel_values_videos"])
    assert int((got["input_ids"] == processor.video_token_id).sum()) == 2 * 16


def test_image_tokens_stay_text():
    """`<image>` tokens (LLaVA-NeXT's anyres image features) are not frames of the video."""
    model = tiny_model(FAMILY)
    inputs = tiny_inputs(model, [6], [4])
    inputs["input_ids"][0, 1:4] = IMAGE_TOKEN_ID
    layout = locate_llava_next_video(model, read_model_call([], (), inputs), None)
    assert layout.num_visual == 64 and int(layout.positions[0, 0]) == 6
    assert layout.frame_ids[0].tolist() == torch.arange(4).repeat_interleave(16).tolist()


@pytest.mark.parametrize("config", [sp.PruneConfig(method="sharp", retention=0.3), sp.PruneConfig(method="fastv")])
def test_generate_prunes_its_prefill_like_the_forward(config):
    """`generate` encodes the video before the prefill and passes no pixels: the layout follows from the
    token count alone, the plan equals the forward's, and the first token is the forward's argmax."""
    model = tiny_model(FAMILY)
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left", video=TinyVideo(frames=5))
    with sp.apply(model, config) as handle, torch.no_grad():
        logits = model(**inputs).logits
        forward = handle.last
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        generated = handle.last
    assert generated.num_visual == forward.num_visual == [80, 80]
    for a, b in zip(generated.keep_positions, forward.keep_positions, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(generated.frame_ids[0], forward.frame_ids[0])
    width = inputs["input_ids"].shape[1]
    assert tokens[:, width].tolist() == logits[:, -1].argmax(-1).tolist()


@pytest.mark.parametrize(
    ("cut", "words"),
    [(1, "not a multiple of 1 frame"), (16, "not a multiple of 4 frame")],
    ids=["partial frame", "missing frame"],
)
def test_a_video_of_the_wrong_length_is_refused_before_any_layer(cut, words):
    model = tiny_model(FAMILY)
    inputs = tiny_inputs(model, [3], [4])
    keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    keep[3 : 3 + cut] = False  # drop video tokens
    inputs["input_ids"], inputs["attention_mask"] = inputs["input_ids"][:, keep], inputs["attention_mask"][:, keep]
    if cut == 1:  # no pixels: generate's prefill, which counts frames of 16 tokens
        inputs.pop("pixel_values_videos")
    calls = []
    model.model.language_model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with sp.apply(model, method="fastv", retention=0.2), pytest.raises(sp.InputError, match=words):
        model(**inputs)
    assert calls == []


# ------------------------------------------------------------------------------------------ black frame, FLOPs
def test_blank_frame_is_the_model_on_a_black_frame():
    model = tiny_model(FAMILY)
    inputs = tiny_inputs(model, [3], [4])
    layout = locate_llava_next_video(model, read_model_call([], (), inputs), None)
    blank = ENTRY.blank_frame(model, layout, None)
    assert blank.shape == (16, model.config.text_config.hidden_size)
    # a black RGB frame through the CLIP normalisation of the video processor, by hand
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    pixels = (-mean / std).view(1, 1, 3, 1, 1).expand(1, 1, 3, 32, 32)
    with torch.no_grad():
        expected = model.get_video_features(pixel_values_videos=pixels).pooler_output[0]
    torch.testing.assert_close(blank, expected.reshape(blank.shape))  # [1, 16, D] before transformers 5.24


@pytest.mark.parametrize(
    "overrides",
    [{}, {"spatial_pool_mode": "conv"}, {"spatial_pool_mode": "max", "vision_feature_layer": [-2, -1]}],
    ids=["average", "conv", "max-two-layers"],
)
def test_vision_flops_match_the_counter(overrides):
    model = _model(**overrides)
    inputs = tiny_inputs(model, [3, 5], [4, 2], video=TinyVideo(frames=3))
    measured = measure_prefill_flops(model, inputs)
    assert measured.total - measured.text == 2 * vision_flops(model, num_frames=3)


def test_vision_flops_need_frames():
    with pytest.raises(sp.ConfigError, match="num_frames"):
        vision_flops(tiny_model(FAMILY), num_frames=0)
