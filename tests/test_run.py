"""`sharp-prune run`: video decoding (PyAV), its errors, and answering about a video file end to end with a tiny
random LLaVA-OneVision checkpoint saved to disk (real classes, real processor, SmolLM2's tokenizer)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from gemma4_release import requires_gemma4  # noqa: E402

import sharp_prune as sp  # noqa: E402
from sharp_prune import video as video_mod  # noqa: E402
from sharp_prune.cli.run import add_run_parser, format_result  # noqa: E402
from sharp_prune.models.loading import build_inputs, load_model, load_processor  # noqa: E402
from sharp_prune.models.processors import _video_processor_base, interpolate_frames  # noqa: E402
from sharp_prune.run import RunResult, run  # noqa: E402
from sharp_prune.testing import (  # noqa: E402
    synthetic_video,
    tiny_causal_lm,
    tiny_gemma4_checkpoint,
    tiny_llava_onevision_checkpoint,
    tiny_model,
    tiny_qwen_vl_checkpoint,
)
from sharp_prune.video import probe_video, read_frames, read_video, sample_indices  # noqa: E402

TOTAL = 36  # frames of the synthetic clip
TOKENS_PER_FRAME = 16  # tiny LLaVA-OV: 32 x 32 frames, patch 4 -> 8 x 8 patches, pooled to 4 x 4


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("media")
    (folder / "notes.txt").write_text("These are meeting notes, not a video.\n" * 20)
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "blank.mp4").write_bytes(b"")
    (folder / "subdir").mkdir()
    clip = synthetic_video(folder / "clip.mp4", num_frames=TOTAL)
    (folder / "truncated.mp4").write_bytes(clip.read_bytes()[:300])
    return {
        "folder": folder,
        "clip": clip,
        "zero_frames": synthetic_video(folder / "zero.avi", num_frames=0),
        "no_stream": synthetic_video(folder / "zero.mp4", num_frames=0),  # mp4 drops an empty track
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_llava_onevision_checkpoint(tmp_path_factory.mktemp("tiny-llava-ov"))


@pytest.fixture(scope="module")
def qwen3_checkpoint(tmp_path_factory):
    return tiny_qwen_vl_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-vl") / "ckpt", "qwen3_vl")


@pytest.fixture(scope="module")
def gemma4_checkpoint(tmp_path_factory):
    return tiny_gemma4_checkpoint(tmp_path_factory.mktemp("tiny-gemma4") / "ckpt", num_layers=6)


# ----------------------------------------------------------------------------------------------- decoding


def test_sample_indices_are_centres_of_equal_parts():
    assert sample_indices(36, 6) == [3, 9, 15, 21, 27, 33]
    assert sample_indices(10, 10) == list(range(10))
    assert sample_indices(100, 1) == [50]
    idx = sample_indices(1000, 7)
    assert idx == sorted(set(idx)) and idx[0] < 1000 / 7 and idx[-1] > 1000 * 6 / 7


def test_read_frames_samples_evenly_over_the_whole_video(media):
    clip = read_video(media["clip"], 6)
    assert clip.frames.shape == (6, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.indices == [3, 9, 15, 21, 27, 33]
    info = clip.info
    assert (info.total_frames, info.fps, info.width, info.height) == (TOTAL, 10.0, 64, 48)
    assert info.duration_s == pytest.approx(3.6)
    assert clip.timestamps == pytest.approx([0.3, 0.9, 1.5, 2.1, 2.7, 3.3])
    assert clip.metadata()["frames_indices"] == clip.indices
    # The red square moves: each sampled frame is a different picture, and it is red where the square is.
    assert all(not np.array_equal(clip.frames[i], clip.frames[i + 1]) for i in range(5))
    assert clip.frames[..., 0].max() > 200
    all_frames = read_frames(media["clip"], TOTAL)
    np.testing.assert_array_equal(all_frames[clip.indices], clip.frames)


def test_frame_count_without_container_metadata(tmp_path):
    av = pytest.importorskip("av")
    if "libvpx" not in av.codecs_available:
        pytest.skip("no VP8 encoder in this PyAV build")
    path = synthetic_video(tmp_path / "clip.webm", num_frames=12, codec="libvpx")
    assert probe_video(path).total_frames == 12  # webm gives no frame count: counted from packets
    assert read_video(path, 3).indices == [2, 6, 10]


@pytest.mark.parametrize(
    ("name", "num_frames", "words"),
    [
        ("missing.mp4", 4, ["not found", "check the path"]),
        ("subdir", 4, ["is a directory", "pass a video file"]),
        ("noise.mp4", 4, ["cannot be read as a video", "corrupt", "pass a video file"]),
        ("truncated.mp4", 4, ["cannot be read as a video", "truncated"]),
        ("notes.txt", 4, ["text file", "not a video", "pass a video file"]),
        ("blank.mp4", 4, ["empty (0 bytes)", "pass a video file"]),
        ("zero.avi", 1, ["no frames", "at least one frame"]),
        ("zero.mp4", 1, ["no video stream", "that contains video"]),
        ("clip.mp4", TOTAL + 1, [f"has {TOTAL} frames but {TOTAL + 1} were asked", f"num_frames <= {TOTAL}"]),
        ("clip.mp4", 0, ["num_frames must be >= 1", "e.g. 32"]),
        ("clip.mp4", -3, ["num_frames must be >= 1"]),
        ("clip.mp4", 2.5, ["num_frames must be an int"]),
        ("clip.mp4", True, ["num_frames must be an int"]),
    ],
)
def test_bad_videos_raise_video_error_before_decoding(media, monkeypatch, name, num_frames, words):
    monkeypatch.setattr(video_mod, "_decode", lambda *a: pytest.fail("decoded a video that should be refused"))
    with pytest.raises(sp.VideoError) as info:
        read_frames(media["folder"] / name, num_frames)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, sp.InputError) and isinstance(info.value, ValueError)


def test_video_errors_come_before_the_model_loads(media):
    with pytest.raises(sp.VideoError, match="not found"):
        run("/no/such/model", media["folder"] / "missing.mp4", "What moves?")
    with pytest.raises(sp.InputError, match="question is empty"):
        run("/no/such/model", media["clip"], "  ")


# ------------------------------------------------------------------------------------- processor, loading


def test_torch_resize_matches_pil_bicubic():
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for height, width in [(32, 32), (96, 128)]:
        expected = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC)).astype(int)
        got = interpolate_frames(torch.from_numpy(image).permute(2, 0, 1)[None], (height, width), "bicubic", True)
        assert np.abs(got[0].permute(1, 2, 0).numpy().astype(int) - expected).max() <= 2


def test_processor_builds_the_prompt_and_pixels(checkpoint, media):
    processor = load_processor(checkpoint)
    clip = read_video(media["clip"], 4)
    inputs = build_inputs(processor, clip, "What moves?")
    video_id = processor.tokenizer.convert_tokens_to_ids("<video>")
    assert int((inputs["input_ids"] == video_id).sum()) == 4 * TOKENS_PER_FRAME + 1  # + the newline token
    pixels = inputs["pixel_values_videos"]
    assert pixels.shape == (1, 4, 3, 32, 32)
    # Resized like PIL's bicubic, then normalised with mean = std = 0.5.
    from PIL import Image

    first = np.asarray(Image.fromarray(clip.frames[0]).resize((32, 32), Image.BICUBIC)).astype(np.float32)
    expected = torch.from_numpy((first / 255 - 0.5) / 0.5).permute(2, 0, 1)
    assert torch.allclose(pixels[0, 0], expected, atol=0.02)
    text = processor.decode(inputs["input_ids"][0])
    assert "What moves?" in text and text.rstrip().endswith("assistant")


def test_model_loading_errors_say_what_to_pass(tmp_path):
    with pytest.raises(sp.ModelLoadError, match="checkpoint folder not found"):
        load_model(tmp_path / "no" / "such-model")
    with pytest.raises(sp.ModelLoadError, match="not a model checkpoint"):
        load_model(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(sp.ModelLoadError, match="is a file"):
        load_model(weights)
    llama = tmp_path / "llama"
    tiny_causal_lm().config.save_pretrained(llama)
    with pytest.raises(sp.UnsupportedModelError, match="llava_onevision"):
        load_model(llama)
    no_processor = tmp_path / "weights-only"
    tiny_model("llava_onevision").config.save_pretrained(no_processor)
    with pytest.raises(sp.ModelLoadError, match="processor"):
        load_model(no_processor)


def test_a_video_processor_without_torch_replacement_says_to_install_torchvision():
    """Qwen2-VL's transformers module imports torchvision: a family without a torch-only replacement for such a
    class gets this message (Qwen-VL families have one: tests/test_qwen_video_processing.py)."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: AutoProcessor loads Qwen2-VL's video processor")
    with pytest.raises(sp.ModelLoadError, match="needs torchvision.*pip install torchvision"):
        _video_processor_base("Qwen2VLVideoProcessor", "qwen2_vl")


# ------------------------------------------------------------------------------------------- end to end


def _hooks_and_attention(model) -> tuple:
    """sharp-prune's hooks on `model` (transformers adds its own on the first forward), and its attention."""
    hooks = [
        hook
        for m in model.modules()
        for hook in [*m._forward_pre_hooks.values(), *m._forward_hooks.values()]
        if getattr(getattr(hook, "func", hook), "__module__", "").startswith("sharp_prune")
    ]
    return len(hooks), model.config.text_config._attn_implementation


def test_run_answers_with_and_without_pruning(checkpoint, media):
    model, processor = load_model(checkpoint, device="cpu")
    assert _hooks_and_attention(model) == (0, "sdpa")
    config = sp.PruneConfig(method="sharp", retention=0.2, layer=2)
    result = run(
        model,
        media["clip"],
        "What moves?",
        config=config,
        processor=processor,
        num_frames=4,
        compare=True,
        max_new_tokens=4,
        prefill_repeats=1,
    )
    assert isinstance(result, RunResult)
    assert result.answer and result.unpruned_answer  # untied random weights answer in (nonsense) words
    n = 4 * TOKENS_PER_FRAME
    assert result.video_tokens == n
    assert result.kept_tokens == max(1, round(0.2 * n))
    assert result.retained_fraction == pytest.approx(result.kept_tokens / n)
    assert result.prompt_tokens > n + 1
    assert result.prefill_s > 0 and result.unpruned_prefill_s > 0 and result.speedup > 0
    assert result.frame_indices == sample_indices(TOTAL, 4)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["config"]["method"] == "sharp" and data["video"]["total_frames"] == TOTAL
    assert _hooks_and_attention(model) == (0, "sdpa")  # the pruning handle was removed
    table = format_result(result)
    assert "unpruned" in table and f"{result.kept_tokens}/{n}" in table and "prefill" in table


def test_cli_run_prints_the_table(checkpoint, media, capsys):
    parser = argparse.ArgumentParser(prog="sharp-prune")
    add_run_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["run", "--model", str(checkpoint), "--video", str(media["clip"]), "--question", "What moves?"]
    argv += ["--method", "uniform", "--retention", "0.5", "--frames", "4", "--max-new-tokens", "3"]
    argv += ["--prefill-repeats", "1", "--device", "cpu", "--dtype", "float32"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "question  What moves?" in out
    assert "uniform" in out and f"{2 * TOKENS_PER_FRAME}/{4 * TOKENS_PER_FRAME}" in out
    assert "4 of 36 frames" in out and " ms " in out
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--frames", "0"])


def test_a_layer_the_checkpoint_lacks_fails_before_the_weights_load(checkpoint, media, monkeypatch):
    """`run --layer 99 --compare` used to fail only after loading the weights and answering unpruned."""
    import sharp_prune.run as run_mod  # `run` loads through the name it imported

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before K was checked")

    monkeypatch.setattr(run_mod, "load_model", no_weights)
    config = sp.PruneConfig(method="fastv", retention=0.2, layer=99)
    with pytest.raises(sp.ConfigError, match=r"K=99 is outside \[1, 3\]"):
        run(checkpoint, media["clip"], "What happens?", config=config, num_frames=4, compare=True)


# ------------------------------------------------------------------------------------------------- Qwen3-VL
def test_run_answers_with_qwen3_vl_pruned(qwen3_checkpoint, media):
    """Qwen3-VL end to end from the checkpoint folder (without torchvision here: the torch-only processor). Its
    processor samples frames itself by default; `run` hands it the frames it decoded, and their indices give the
    `<t seconds>` before each temporal patch."""
    question = "What moves?"
    config = sp.PruneConfig(method="sharp", retention=0.2, layer=2)
    result = run(qwen3_checkpoint, media["clip"], question, config=config, num_frames=6, max_new_tokens=4)
    assert result.model_class == "Qwen3VLForConditionalGeneration"
    assert result.frames == 6 and result.frame_indices == sample_indices(TOTAL, 6) == [3, 9, 15, 21, 27, 33]
    processor = load_processor(qwen3_checkpoint)
    inputs = build_inputs(processor, read_video(media["clip"], 6), question)
    written = int((inputs["input_ids"] == processor.video_token_id).sum())
    assert inputs["video_grid_thw"].tolist() == [[3, 12, 16]]  # 6 x 48 x 64 pixels: within bounds, no resize
    assert written == 3 * 12 * 16 // 4  # merge 2 x 2
    text = processor.decode(inputs["input_ids"][0])
    for stamp in ("<0.6 seconds>", "<1.8 seconds>", "<3.0 seconds>"):  # mean time of frames (3, 9), (15, 21)...
        assert stamp in text
    record = result.record
    assert record.num_visual == [written] and result.video_tokens == written
    assert record.budget == [config.budget(written)] and result.kept_tokens == config.budget(written)
    assert result.answer  # untied random weights answer in (nonsense) words
    assert result.prompt_tokens == inputs["input_ids"].shape[1]


def test_cli_run_with_qwen3_vl_prints_json(qwen3_checkpoint, media, capsys):
    parser = argparse.ArgumentParser(prog="sharp-prune")
    add_run_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["run", "--model", str(qwen3_checkpoint), "--video", str(media["clip"]), "--question", "What moves?"]
    argv += ["--method", "sharp", "--retention", "0.25", "--layer", "2", "--frames", "4", "--max-new-tokens", "2"]
    argv += ["--prefill-repeats", "1", "--device", "cpu", "--json"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_class"] == "Qwen3VLForConditionalGeneration" and data["frames"] == 4
    assert data["video_tokens"] == 2 * 12 * 16 // 4 and data["kept_tokens"] == data["video_tokens"] // 4
    assert data["answer"]


# ------------------------------------------------------------------------------------------------- Gemma 4
# The tiny Gemma 4 checkpoint (6 layers, the last two sharing KV; max_soft_tokens 70, patch 4, pooling 2): a 64 x 48
# clip becomes 72 x 56 frames of 9 x 7 = 63 tokens, a 48 x 48 one 64 x 64 frames of 8 x 8 = 64 tokens. `run` answers
# with `generate`, which drops `video_position_ids` before the prefill: PosC (sharp's default) knows the frame size
# only when the frame is square, so the 4:3 clip prunes without PosC and the square one with it.
GEMMA4_WIDE_TOKENS, GEMMA4_SQUARE_TOKENS = 63, 64


@requires_gemma4
def test_run_answers_with_gemma4_pruned(gemma4_checkpoint, media):
    model, processor = load_model(gemma4_checkpoint, device="cpu")
    question = "What moves?"
    config = sp.PruneConfig(method="sharp", retention=0.2, layer=2, posc=False)
    result = run(model, media["clip"], question, config=config, processor=processor, num_frames=4, max_new_tokens=4)
    assert result.model_class == "Gemma4ForConditionalGeneration"
    n = 4 * GEMMA4_WIDE_TOKENS
    assert result.record.num_visual == [n] and result.video_tokens == n
    assert result.record.budget == [config.budget(n)] and result.kept_tokens == config.budget(n)
    assert result.answer  # untied random weights answer in (nonsense) words
    inputs = build_inputs(processor, read_video(media["clip"], 4), question)
    assert result.prompt_tokens == inputs["input_ids"].shape[1]
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == n
    text = processor.decode(inputs["input_ids"][0])
    for stamp in ("00:00", "00:01", "00:02", "00:03"):  # frames 4, 13, 22, 31 at 10 fps
        assert f"{stamp} <|image><|video|>" in text
    with pytest.raises(sp.InputError, match="known only for square frames"):
        run(
            model,
            media["clip"],
            question,
            config=sp.PruneConfig(method="sharp", retention=0.2, layer=2),
            processor=processor,
            num_frames=4,
            max_new_tokens=2,
        )
    assert _hooks_and_attention(model) == (0, "sdpa")  # removed after the failed run too


@requires_gemma4
def test_cli_run_with_gemma4_prunes_a_square_video_with_posc(gemma4_checkpoint, tmp_path, capsys):
    square = synthetic_video(tmp_path / "square.mp4", num_frames=TOTAL, width=48, height=48)
    parser = argparse.ArgumentParser(prog="sharp-prune")
    add_run_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["run", "--model", str(gemma4_checkpoint), "--video", str(square), "--question", "What moves?"]
    argv += ["--method", "sharp", "--retention", "0.25", "--layer", "2", "--frames", "4", "--max-new-tokens", "2"]
    argv += ["--prefill-repeats", "1", "--device", "cpu", "--json"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_class"] == "Gemma4ForConditionalGeneration" and data["frames"] == 4
    assert data["config"]["method"] == "sharp" and data["config"]["posc"] is True
    assert data["video_tokens"] == 4 * GEMMA4_SQUARE_TOKENS and data["kept_tokens"] == GEMMA4_SQUARE_TOKENS
    assert data["answer"]
