"""InternVL: frames found from the processor's layout (tiles of image-context tokens with text between frames),
the generate path, the black tile, the vision tower's FLOPs, and the shared checks that name their families."""

from __future__ import annotations

import pytest
import torch
from reference import reference_logits
from test_posc_regd import test_blank_pass_runs_only_the_first_k_layers as _blank_pass_check
from test_segm import test_record_carries_frame_similarity_and_grid as _segm_record_check

import sharp_prune as sp
from sharp_prune.hf_protocol import ModelCall
from sharp_prune.measure.flop_counter import measure_prefill_flops
from sharp_prune.measure.flops import vision_flops
from sharp_prune.models import FAMILIES
from sharp_prune.models.internvl import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    blank_frame_internvl,
    locate_internvl,
    tiny_video_ids,
)
from sharp_prune.testing import (
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    TinyVideo,
    tiny_inputs,
    tiny_model,
)

PER_TILE = 16  # tiny InternVL: 32 x 32 tiles, patch 4, pixel shuffle 0.5 -> 4 x 4 tokens


@pytest.fixture(scope="module")
def model():
    return tiny_model("internvl")


def _call(input_ids: torch.Tensor) -> ModelCall:
    return ModelCall(input_ids, None, None, None, None, None, None)


def _expected_frames(row: torch.Tensor) -> torch.Tensor:
    """Frame of each image-context token, worked out from the `<img>` markers: each `<img>...</img>` span is cut
    into tiles of PER_TILE tokens, frames counted along the row."""
    out = torch.full_like(row, -1)
    frame, inside, count = -1, False, 0
    for i, token in enumerate(row.tolist()):
        if token == VISION_START_ID:
            inside, count = True, 0
        elif token == VISION_END_ID:
            inside = False
        elif inside and token == VIDEO_TOKEN_ID:
            if count % PER_TILE == 0:
                frame += 1
            out[i] = frame
            count += 1
    return out


def test_locate_follows_the_processor_layout(model):
    """Two videos (3 and 2 frames) and a 3-tile image in one prompt: every tile is a frame, in order; the
    "FrameN: " text, the newlines and the markers between tiles stay text."""
    image = torch.cat(
        [torch.tensor([VISION_START_ID]), torch.full((3 * PER_TILE,), VIDEO_TOKEN_ID), torch.tensor([VISION_END_ID])]
    )
    row = torch.cat(
        [
            torch.tensor([5, 6, 7]),
            tiny_video_ids(3, PER_TILE),
            torch.tensor([8, 9]),
            image,
            torch.tensor([10]),
            tiny_video_ids(2, PER_TILE),
            torch.tensor([11, 12, 13]),
        ]
    )
    layout = locate_internvl(model, _call(row[None]), None)
    expected = _expected_frames(row)
    assert layout.num_frames == 8 and layout.grid == (4, 4)
    assert torch.equal(layout.positions[0], (expected >= 0).nonzero().flatten())
    assert torch.equal(layout.frame_ids[0], expected[expected >= 0])
    assert layout.frame_ids[0].bincount().tolist() == [PER_TILE] * 8
    # the text between frames is never a video token
    assert not set(layout.positions[0].tolist()) & set((row != VIDEO_TOKEN_ID).nonzero().flatten().tolist())


def test_locate_on_a_padded_batch(model):
    inputs = tiny_inputs(model, [3, 7], [6, 2], video=TinyVideo(frames=5), padding_side="left")
    layout = locate_internvl(model, _call(inputs["input_ids"]), None)
    assert layout.num_visual == 5 * PER_TILE
    starts = []
    for row in range(2):
        expected = _expected_frames(inputs["input_ids"][row])
        assert torch.equal(layout.positions[row], (expected >= 0).nonzero().flatten())
        assert torch.equal(layout.frame_ids[row], torch.arange(5).repeat_interleave(PER_TILE))
        starts.append(int(inputs["attention_mask"][row].argmax()))  # first real token
    # the same video after prefixes of 3 and 7 tokens: the layouts differ by the shift alone
    shift = (starts[1] + 7) - (starts[0] + 3)
    assert torch.equal(layout.positions[1] - layout.positions[0], torch.full((5 * PER_TILE,), shift))


def test_text_only_and_ragged_tiles(model):
    assert locate_internvl(model, _call(torch.tensor([[5, 6, 7, 8]])), None) is None
    ragged = torch.cat(
        [torch.tensor([5, VISION_START_ID]), torch.full((PER_TILE + 3,), VIDEO_TOKEN_ID), torch.tensor([6])]
    )
    with pytest.raises(sp.InputError, match="whole number of tiles"):
        locate_internvl(model, _call(ragged[None]), None)
    with pytest.raises(sp.InputError, match="input_ids"):
        locate_internvl(model, ModelCall(None, torch.zeros(1, 4, 64), None, None, None, None, None), None)


def test_generate_prefill_locates_what_the_forward_locates(model):
    """generate encodes the tiles before the prefill; frames still come from the ids, and its first token is the
    pruned forward's argmax."""
    inputs = tiny_inputs(model, [3, 5], [4, 2])
    with sp.apply(model, method="sharp", retention=0.25, layer=2) as handle, torch.no_grad():
        logits = model(**inputs).logits
        forward = handle.last
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        prefill = handle.last
    assert prefill.num_visual == forward.num_visual == [64, 64]
    for row in range(2):
        assert torch.equal(prefill.frame_ids[row], forward.frame_ids[row])
        assert torch.equal(prefill.keep_positions[row], forward.keep_positions[row])
    assert torch.equal(tokens[:, inputs["input_ids"].shape[1]], logits[:, -1].argmax(-1))


def test_pruned_forward_with_two_videos_matches_the_reference(model):
    """Frames of two videos in one prompt, pruned by FastV: the reference runs the kept sequence directly."""
    ids = torch.cat(
        [
            torch.tensor([5, 6]),
            tiny_video_ids(3, PER_TILE),
            torch.tensor([7]),
            tiny_video_ids(2, PER_TILE),
            torch.tensor([8, 9, 10]),
        ]
    )
    inputs = {
        "input_ids": ids[None],
        "pixel_values": torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
    }
    with sp.apply(model, method="fastv", retention=0.25, layer=2) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    record = handle.last
    assert record.num_visual == [80] and int(record.frame_ids[0].max()) == 4
    visual, kept = set(record.visual_positions[0].tolist()), set(record.keep_positions[0].tolist())
    keep = torch.tensor([p for p in range(ids.numel()) if p not in visual or p in kept])
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, 2)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_blank_frame_is_a_black_tile_through_the_model(model):
    layout = locate_internvl(model, _call(tiny_inputs(model, [3], [4])["input_ids"]), None)
    blank = blank_frame_internvl(model, layout, None)
    assert blank.shape == (PER_TILE, model.config.text_config.hidden_size)
    # the processor's black pixel: 0 rescaled, then normalised with ImageNet's mean and std
    black = ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():
        direct = model.get_image_features(pixel_values=black.contiguous()).pooler_output[0]
    torch.testing.assert_close(blank, direct)
    assert FAMILIES["internvl"].blank_frame is blank_frame_internvl


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_vision_flops_match_the_counter(attn):
    model = tiny_model("internvl", attn_implementation=attn)
    inputs = tiny_inputs(model, [3, 6], [5, 2], video=TinyVideo(frames=3))
    measured = measure_prefill_flops(model, inputs)
    assert measured.total - measured.text == 2 * vision_flops(model, num_frames=3)
    with pytest.raises(sp.ConfigError, match="num_frames"):
        vision_flops(model)


def test_pre_stage_drops_repeated_tiles():
    """A static video (every tile the first one's pixels): temporal merge keeps the first frame's tokens only,
    with text between the frames."""
    model = tiny_model("internvl")
    inputs = tiny_inputs(model, [3], [4])
    inputs["pixel_values"][1:] = inputs["pixel_values"][:1]
    config = sp.PruneConfig(method="fastv", retention=0.5, pre="temporal_merge", pre_threshold=0.99)
    with sp.apply(model, config) as handle, torch.no_grad():
        logits = model(**inputs).logits
    assert handle.last.pre_kept == [PER_TILE] and logits.shape[1] == handle.last.kept_len


# The shared checks that list their families by name, run for this one.
def test_blank_pass_runs_only_the_first_k_layers():
    _blank_pass_check("internvl")


def test_record_carries_frame_similarity_and_grid():
    _segm_record_check("internvl")


def test_the_lmms_eval_model_extends_upstream_internvl_hf():
    """lmms-eval has a chat wrapper only for the transformers class: the pruned model is that, and is the default."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.models import MODEL_REGISTRY_V2 as registry
    from lmms_eval.models.chat.internvl_hf import InternVLHf

    from sharp_prune.integrations.lmms_eval import MODELS

    assert MODELS["sharp_internvl"][0] is None
    assert "sharp_internvl" in registry.list_model_names()
    assert registry.resolve("sharp_internvl").model_type == "chat"
    cls = registry.get_model_class("sharp_internvl")
    assert issubclass(cls, InternVLHf) and cls.__name__ == "SharpInternVLHfChat" and cls.is_simple is False
    assert cls._sharp_model_types == ("internvl",)


# ---------------------------------------------------------------------------------------------- the real processor
@pytest.fixture(scope="module")
def processor_and_model():
    """transformers' InternVLProcessor (SmolLM2's tokenizer with InternVL's tokens, sharp-prune's torch-only video
    processor where torchvision is missing) and a tiny model on its vocabulary: 32 x 32 tiles of 16 tokens."""
    from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from sharp_prune.models.internvl import torch_video_processors
    from sharp_prune.models.processors import accepting_processor_class
    from sharp_prune.models.tiny import text_config
    from sharp_prune.smollm2 import DEFAULT_CACHE, load_smollm2

    if not (DEFAULT_CACHE / "tokenizer.json").is_file():
        load_smollm2()  # fills the tokenizer cache once
    tokens = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_CACHE, extra_special_tokens=tokens)
    pixels = dict(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), size={"height": 32, "width": 32})
    (video_cls,) = torch_video_processors()
    processor = accepting_processor_class(InternVLProcessor)(
        image_processor=GotOcr2ImageProcessorPil(**pixels),
        tokenizer=tokenizer,
        video_processor=video_cls(**pixels),
        image_seq_length=PER_TILE,
    )
    text = text_config(3, rope=False)
    text.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=None)
    torch.manual_seed(0)
    config = InternVLConfig(
        text_config=dict(model_type="qwen2", **text),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=PER_TILE,
    )
    return processor, InternVLForConditionalGeneration(config).eval()


def test_frames_of_the_real_processor_layout(processor_and_model):
    """A batch of two prompts, each 6 tiles: two 3-frame videos; an image of 1 x 2 tiles + thumbnail, then a
    3-frame video (one processor call takes videos of one length). Every tile is a frame, in order; the text the
    processor writes between frames ("\\nFrameN: <img>") is not. The padded batch prunes."""
    processor, model = processor_and_model
    gen = torch.Generator().manual_seed(0)
    videos = [torch.randint(0, 256, (3, 48, 64, 3), dtype=torch.uint8, generator=gen).numpy() for _ in range(3)]
    image = torch.randint(0, 256, (3, 32, 64), dtype=torch.uint8, generator=gen)
    inputs = processor(
        text=["Watch <video> and <video>, then tell me what happens.", "Look at <IMG_CONTEXT> then <video> now?"],
        images=[image],
        videos=videos,
        images_kwargs={"max_patches": 2},
        padding=True,
        return_tensors="pt",
    )
    context = processor.tokenizer.context_image_token_id
    assert inputs["pixel_values"].shape[0] == 12  # 3 + 3 frames; 2 tiles + thumbnail, 3 frames
    layout = locate_internvl(model, _call(inputs["input_ids"]), None)
    assert layout.num_frames == 6 and layout.grid == (4, 4)
    for row in range(2):
        ids = inputs["input_ids"][row]
        assert torch.equal(layout.positions[row], (ids == context).nonzero().flatten())
        assert torch.equal(layout.frame_ids[row], torch.arange(6).repeat_interleave(PER_TILE))
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "</img>\nFrame2: <img>" in text and "</img>\nFrame1: <img>" not in text
    with sp.apply(model, method="sharp", retention=0.25, layer=1) as handle, torch.no_grad():
        logits = model(**inputs).logits
    assert handle.last.num_visual == [6 * PER_TILE] * 2 and logits.shape[1] == handle.last.kept_len


def test_the_torch_video_processor_follows_internvl_steps(processor_and_model):
    """Resize to `size`, rescale, normalise: a constant frame becomes (value / 255 - mean) / std; frames are
    sampled from a half-step shift as transformers' class samples them."""
    from transformers.video_utils import VideoMetadata

    processor, _ = processor_and_model
    video = torch.full((4, 40, 56, 3), 51, dtype=torch.uint8).numpy()
    out = processor.video_processor(videos=[video], return_tensors="pt")["pixel_values_videos"]
    assert out.shape == (1, 4, 3, 32, 32)
    expected = (51 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, :, 5, 7], expected.expand(4, 3), atol=1e-5, rtol=1e-5)
    indices = processor.video_processor.sample_frames(VideoMetadata(total_num_frames=40, fps=10.0), num_frames=8)
    assert indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
