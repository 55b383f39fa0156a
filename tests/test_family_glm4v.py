"""GLM-4V (glm4v, glm46v, glm4v_moe): locating frames in the real processor's layout, the generate path, the black
frame, RoPE removal for GLM's partial interleaved RoPE, and the vision tower's FLOPs against the counter.

The three entries share `sharp_prune.models.glm4v` (locate, black frame, vision tower); the shared battery runs each
of them, and the tests here run on all three where the text decoder matters.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import sharp_prune as sp
from sharp_prune.hf_protocol import ModelCall, rope_function_of
from sharp_prune.measure.flops import measure_prefill_flops, prefill_flops, vision_flops
from sharp_prune.models.glm4v import (
    blank_frame_glm4v,
    locate_glm4v,
    tiny_glm4v_config,
    torch_video_processors,
    video_segment,
)
from sharp_prune.steps.score import remove_rope
from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model

FAMILIES = ["glm4v", "glm46v", "glm4v_moe"]
SPECIAL = ["<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|image|>", "<|video|>"]


def _call(inputs: dict, with_grids: bool = True, position_ids: torch.Tensor | None = None) -> ModelCall:
    return ModelCall(
        input_ids=inputs["input_ids"],
        inputs_embeds=None,
        attention_mask=inputs.get("attention_mask"),
        position_ids=position_ids,
        cache=None,
        pixel_values_videos=inputs.get("pixel_values_videos") if with_grids else None,
        video_grid_thw=inputs.get("video_grid_thw") if with_grids else None,
    )


# ----------------------------------------------------------------------------- the real processor's layout
@pytest.fixture(scope="module")
def processor_and_model():
    """Glm4vProcessor (SmolLM2's tokenizer + GLM's special tokens, patch 4, merge 2) and a tiny Glm4v model whose
    vocabulary and token ids are the tokenizer's."""
    import transformers
    from transformers import AutoTokenizer
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from sharp_prune.models.processors import accepting_processor_class
    from sharp_prune.smollm2 import DEFAULT_CACHE, load_smollm2

    if not (DEFAULT_CACHE / "tokenizer.json").is_file():
        load_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_CACHE)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = dict(zip(SPECIAL, tokenizer.convert_tokens_to_ids(SPECIAL), strict=True))
    pixels = dict(patch_size=4, temporal_patch_size=2, merge_size=2)
    if transformers.utils.is_torchvision_available():
        video_cls, processor_cls = transformers.Glm4vVideoProcessor, transformers.Glm4vProcessor
    else:
        video_cls, _ = torch_video_processors()  # Glm4vVideoProcessor, Glm46VVideoProcessor
        processor_cls = accepting_processor_class(transformers.Glm4vProcessor)
    processor = processor_cls(
        image_processor=Glm4vImageProcessorPil(**pixels),
        tokenizer=tokenizer,
        video_processor=video_cls(**pixels, size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64 * 8}),
    )
    config = tiny_glm4v_config(
        "glm4v",
        4,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        vocab_size=len(tokenizer),
    )
    torch.manual_seed(0)
    model = transformers.Glm4vForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.pad_token_id or 0
    return processor, model


def _process(processor, text: str, videos: list[np.ndarray], images: list | None = None) -> dict:
    from transformers.video_utils import VideoMetadata

    metadata = [
        VideoMetadata(total_num_frames=len(v), fps=2.0, width=v.shape[2], height=v.shape[1], duration=len(v) / 2.0)
        for v in videos
    ]
    for meta in metadata:
        meta.frames_indices = list(range(meta.total_num_frames))
    out = processor(
        text=[text],
        videos=videos,
        images=images,
        videos_kwargs=dict(video_metadata=metadata, do_sample_frames=False),
        return_tensors="pt",
    )
    return dict(out)


def _video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (frames, height, width, 3), dtype=np.uint8)


def test_the_processors_frames_are_found_and_its_image_is_not(processor_and_model):
    """Two videos (3 and 2 temporal patches, 6 x 8 and 4 x 4 tokens a frame) and an image between them: every frame is
    one run of image tokens inside a video; the image's tokens are not video; the span ends at `<|end_of_video|>`."""
    from PIL import Image

    processor, model = processor_and_model
    video = "<|begin_of_video|><|video|><|end_of_video|>"
    text = f"Watch {video} then look <|begin_of_image|><|image|><|end_of_image|> and {video} Which is first?"
    image = Image.fromarray(_video(1, 32, 32, 9)[0])
    inputs = _process(processor, text, [_video(6, 48, 64, 0), _video(4, 32, 32, 1)], [image])
    assert inputs["video_grid_thw"].tolist() == [[3, 12, 16], [2, 8, 8]]
    layout = locate_glm4v(model, _call(inputs), None)
    ids = inputs["input_ids"][0]
    config = model.config
    # what the processor itself marks as video (mm_token_type_ids == 2), frame by frame
    video_positions = (inputs["mm_token_type_ids"][0] == 2).nonzero().flatten()
    assert torch.equal(layout.positions[0], video_positions)
    assert bool((ids[layout.positions[0]] == config.image_token_id).all())
    image_tokens = int(inputs["image_grid_thw"].prod()) // 4  # the image's tokens are the same id, not video
    assert image_tokens > 0 and int((ids == config.image_token_id).sum()) == video_positions.numel() + image_tokens
    sizes = torch.bincount(layout.frame_ids[0]).tolist()
    assert sizes == [48, 48, 48, 16, 16] and layout.num_frames == 5
    assert layout.grid is None  # two frame sizes: PosC refuses (see the battery), the other methods prune
    # each frame begins right after a <|begin_of_image|>
    starts = layout.positions[0][torch.cat([torch.tensor([True]), layout.frame_ids[0].diff() > 0])]
    assert bool((ids[starts - 1] == config.image_start_token_id).all())
    last_end = int((ids == config.video_end_token_id).nonzero().flatten()[-1])
    assert int(layout.video_end[0]) == last_end
    # the frames' timestamps are text between them
    assert processor.tokenizer.decode(ids[int(layout.positions[0][47]) + 2]).strip() == "0"

    # transformers 5.24's Glm4vModel cannot run an image and a video in one prompt (it scatters the image features
    # over every image token, the video's too): the pruned forward runs the two videos alone
    two_videos = _process(processor, f"Watch {video} and {video} Which?", [_video(6, 48, 64, 0), _video(4, 32, 32, 1)])
    with sp.apply(model, method="fastv", retention=0.25, layer=2) as handle, torch.no_grad():
        logits = model(**two_videos).logits
    assert handle.last.num_visual == [video_positions.numel()]
    assert logits.shape[1] == handle.last.kept_len


def test_generate_locates_frames_from_positions_as_the_forward_does(processor_and_model):
    """Under generate the prefill has M-RoPE positions and no grids: same frames, same non-square frame size."""
    processor, model = processor_and_model
    inputs = _process(processor, "A <|begin_of_video|><|video|><|end_of_video|> what moves?", [_video(6, 48, 64, 2)])
    forward = locate_glm4v(model, _call(inputs), None)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"]
    )
    from_positions = locate_glm4v(model, _call(inputs, with_grids=False, position_ids=positions), None)
    assert forward.grid == from_positions.grid == (6, 8)
    assert torch.equal(forward.positions, from_positions.positions)
    assert torch.equal(forward.frame_ids, from_positions.frame_ids)
    # and a pruned generate keeps what the pruned forward keeps, with PosC's black frame at (6, 8)
    config = sp.PruneConfig(method="sharp", retention=0.25, layer=2)
    with sp.apply(model, config) as handle, torch.no_grad():
        logits = model(**inputs).logits
        kept = handle.last.keep_positions[0]
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert torch.equal(handle.last.keep_positions[0], kept)
    assert int(tokens[0, inputs["input_ids"].shape[1]]) == int(logits[0, -1].argmax())


def test_grids_that_do_not_match_the_tokens_are_refused(processor_and_model):
    processor, model = processor_and_model
    inputs = _process(processor, "A <|begin_of_video|><|video|><|end_of_video|> b", [_video(6, 48, 64, 3)])
    with pytest.raises(sp.InputError, match="video_grid_thw"):
        locate_glm4v(model, _call(dict(inputs, video_grid_thw=torch.tensor([[2, 12, 16]]))), None)
    with pytest.raises(sp.InputError, match="video_grid_thw"):
        locate_glm4v(model, _call(dict(inputs, video_grid_thw=torch.tensor([[3, 12, 16], [1, 4, 4]]))), None)


# ----------------------------------------------------------------------------- the tiny layout
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_layout_frames_and_span(family):
    model = tiny_model(family, num_layers=2)
    inputs = tiny_inputs(model, [3, 6], [5, 2], video=TinyVideo(frames=3, grid=2), padding_side="left")
    layout = locate_glm4v(model, _call(inputs), None)
    segment = video_segment(3, 4)
    assert layout.num_visual == 12 and layout.grid == (2, 2) and layout.num_frames == 3
    assert layout.frame_ids[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # left padding: the samples' spans end at their own <|end_of_video|>
    ends = [int(inputs["input_ids"].shape[1]) - s - 1 for s in (5, 2)]
    assert layout.video_end.tolist() == ends
    assert inputs["input_ids"][0, ends[0] - len(segment) + 1 : ends[0] + 1].tolist() == segment


# ----------------------------------------------------------------------------- black frame
@pytest.mark.parametrize("family", FAMILIES)
def test_blank_frame_is_one_frame_of_the_layouts_size(family):
    model = tiny_model(family, num_layers=2)
    layout = sp.VisualLayout(positions=torch.zeros(1, 1, dtype=torch.long), frame_ids=torch.zeros(1, 1), grid=(3, 5))
    frame = blank_frame_glm4v(model, layout, None)
    assert frame.shape == (15, model.config.text_config.hidden_size)
    assert bool(torch.isfinite(frame).all())
    with pytest.raises(sp.InputError, match="frame size"):
        blank_frame_glm4v(model, sp.VisualLayout(positions=layout.positions, frame_ids=layout.frame_ids), None)


# ----------------------------------------------------------------------------- RoPE removal (FEATHER)
@pytest.mark.parametrize("family", FAMILIES)
def test_rope_is_removed_with_the_models_own_rotation(family):
    """GLM-4.1V rotates interleaved pairs of the first half of each head (partial rotary factor 0.5), GLM-4.5V the
    rotate-half pairs of that half: the model's own function undoes both; plain rotate-half would not for 4.1V."""
    model = tiny_model(family, num_layers=1)
    decoder = model.model.language_model
    attention = decoder.layers[0].self_attn
    apply_rope = rope_function_of(attention)
    assert apply_rope is importlib.import_module(type(attention).__module__).apply_rotary_pos_emb
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 60, (3, 1, 12), generator=gen)
    cos, sin = decoder.rotary_emb(torch.zeros(1, 12, 64), positions)
    assert cos.shape[-1] == 8  # half of the 16-wide head rotates
    q, k = torch.randn(1, 4, 12, 16, generator=gen), torch.randn(1, 2, 12, 16, generator=gen)
    q_back, k_back = remove_rope(*apply_rope(q, k, cos, sin), (cos, sin), apply_rope)
    torch.testing.assert_close(q_back, q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_back, k, atol=1e-5, rtol=1e-5)
    plain, _ = remove_rope(*apply_rope(q, k, cos, sin), (cos, sin))
    assert torch.allclose(plain, q, atol=1e-5) == (family == "glm4v_moe")


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("video", [TinyVideo(frames=4, grid=4), TinyVideo(frames=2, grid=3)], ids=["4x8x8", "2x6x6"])
def test_vision_estimate_matches_counter(family, video):
    model = tiny_model(family, num_layers=2)
    inputs = tiny_inputs(model, [3], [4], video=video)
    measured = measure_prefill_flops(model, inputs)
    side = 2 * video.grid
    assert measured.total - measured.text == vision_flops(model, video_grid_thw=(video.frames, side, side))


@pytest.mark.parametrize("method", ["none", "fastv", "sharp"])
def test_text_estimate_matches_counter(method):
    """GLM-4.1V's decoder (fused gate/up MLP, q/k/v biases, extra norms) is counted as the FLOPs model counts it."""
    model = tiny_model("glm4v")
    inputs = tiny_inputs(model, [3, 6], [5, 2], padding_side="left")
    with sp.apply(model, method=method, retention=0.3, layer=2) as handle:
        measured = measure_prefill_flops(model, inputs)
        report = prefill_flops(model, handle.last)
    blank = vision_flops(model, video_grid_thw=(1, 8, 8)) if method == "sharp" else 0  # PosC's black frame
    counted = measured.text - blank
    assert abs(report.total - counted) <= max(report.breakdown["selection"], 0.02 * counted), (report.total, counted)
    assert measured.total - measured.text == 2 * vision_flops(model, video_grid_thw=(4, 8, 8))


def test_the_moe_decoders_flops_match_the_counter():
    """GLM-4.5V's decoder: a dense first layer, then a router, the top-2 of 4 routed experts and a shared expert per
    token, counted exactly (tests/test_flops_moe.py runs every experts implementation)."""
    model = tiny_model("glm4v_moe")
    inputs = tiny_inputs(model, [3], [4])
    with sp.apply(model, method="fastv", retention=0.3, layer=2) as handle:
        measured = measure_prefill_flops(model, inputs)
        report = prefill_flops(model, handle.last)
    assert abs(report.total - measured.text) <= report.breakdown["selection"], (report.breakdown, measured)
