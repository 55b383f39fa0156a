"""Reliability: long videos in memory linear in N, threads, mixed batches, images beside video, half precision,
and video files of random or damaged bytes."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_no_quadratic import LargestAllocation

import sharp_prune as sp
from sharp_prune.testing import VIDEO_TOKEN_ID, tiny_causal_lm, tiny_inputs, tiny_model

# ---------------------------------------------------------------------------------------------- long input


def _long_prefill(model, method: str, frames: int, tokens_per_frame: int = 256) -> tuple[int, sp.PruneRecord]:
    """Largest tensor any op returns during one pruned prefill of `frames` x `tokens_per_frame` video tokens."""
    n_visual = frames * tokens_per_frame
    seq_len = n_visual + 40
    input_ids = torch.randint(3, 200, (1, seq_len), generator=torch.Generator().manual_seed(0))
    frame_map = sp.frame_map_for_span(seq_len, start=8, num_frames=frames, tokens_per_frame=tokens_per_frame)
    with sp.apply(model, method=method, retention=0.2, layer=1) as handle, handle.visual_frames(frame_map):
        recorder = LargestAllocation()
        with torch.no_grad(), recorder:
            logits = model(input_ids=input_ids, logits_to_keep=1).logits
    assert torch.isfinite(logits).all()
    return recorder.largest, handle.last


@pytest.mark.parametrize("method", ["sharp", "fastv"])
def test_16k_visual_tokens_run_pruned_in_memory_linear_in_n(method):
    """16,384 video tokens (64 frames x 256) finish pruned; the largest allocation is far below N x N and at
    most doubles when N doubles (it quadrupled before RegD's farthest-point step was blocked)."""
    model = tiny_causal_lm(num_layers=3)
    half, _ = _long_prefill(model, method, frames=32)
    full, record = _long_prefill(model, method, frames=64)
    n = 64 * 256
    assert record.num_visual == [n] and record.budget == [sp.PruneConfig(retention=0.2).budget(n)]
    assert full < n * n / 8
    assert full <= 2.1 * half, (half, full)


# ---------------------------------------------------------------------------------------------- threads


def test_two_models_with_different_configs_alternate_in_one_process():
    fastv_model, sharp_model = tiny_model("qwen2_vl", seed=0), tiny_model("qwen2_vl", seed=0)
    inputs = tiny_inputs(fastv_model, [3], [5])
    reference = {}
    for name, model, config in (
        ("fastv", fastv_model, sp.PruneConfig(method="fastv", retention=0.25, layer=1)),
        ("sharp", sharp_model, sp.PruneConfig(method="sharp", retention=0.5, layer=2, record_scores=True)),
    ):
        with sp.apply(model, config) as handle, torch.no_grad():
            model(**inputs)
        reference[name] = handle.last
    handles = {
        "fastv": sp.apply(fastv_model, sp.PruneConfig(method="fastv", retention=0.25, layer=1)),
        "sharp": sp.apply(sharp_model, sp.PruneConfig(method="sharp", retention=0.5, layer=2, record_scores=True)),
    }
    with torch.no_grad():
        for _ in range(3):
            for name, model in (("fastv", fastv_model), ("sharp", sharp_model)):
                model(**inputs)
                record = handles[name].last
                assert record.method == name and record.budget == reference[name].budget
                assert torch.equal(record.keep_positions[0], reference[name].keep_positions[0])
    assert handles["sharp"].last.scores is not None and handles["fastv"].last.scores is None
    for handle in handles.values():
        handle.remove()


def test_a_model_used_from_two_threads_in_turn_gives_each_its_own_record():
    model = tiny_model("llava_onevision")
    short, long_ = tiny_inputs(model, [2], [3]), tiny_inputs(model, [9], [12], seed=1)
    handle = sp.apply(model, method="sharp", retention=0.25)
    expected = {}
    for name, inputs in (("short", short), ("long", long_)):
        with torch.no_grad():
            model(**inputs)
        expected[name] = handle.last
    seen = {}

    def work(name, inputs):
        with torch.no_grad():
            model(**inputs)
        seen[name] = handle.last

    for name, inputs in (("long", long_), ("short", short), ("long", long_)):
        thread = threading.Thread(target=work, args=(name, inputs))
        thread.start()
        thread.join()
        assert seen[name].seq_len == expected[name].seq_len
        assert torch.equal(seen[name].keep_positions[0], expected[name].keep_positions[0])
    handle.remove()


def test_a_second_thread_is_refused_while_a_forward_runs_and_the_first_is_unharmed():
    model = tiny_model("qwen2_5_vl")
    inputs = tiny_inputs(model, [3], [4])
    with sp.apply(model, method="fastv", retention=0.25) as handle, torch.no_grad():
        pruned_logits = model(**inputs).logits
        expected = handle.last.keep_positions[0]
        inside, release = threading.Event(), threading.Event()

        def pause(*args):  # holds the first forward inside layer 0 until the second thread has tried
            inside.set()
            release.wait(timeout=30)

        hook = model.model.language_model.layers[0].register_forward_pre_hook(pause)
        outcome = {}

        def first():
            with torch.no_grad():
                outcome["logits"] = model(**inputs).logits

        thread = threading.Thread(target=first)
        thread.start()
        assert inside.wait(timeout=30)
        with pytest.raises(sp.InputError, match="another thread"):
            model(**inputs)
        release.set()
        thread.join()
        hook.remove()
        assert torch.equal(handle.last.keep_positions[0], expected)
        # the refused forward's clean-up must not touch the running one's state: it is still pruned
        torch.testing.assert_close(outcome["logits"], pruned_logits)
        model(**inputs)  # and the model is free again
        # a forward that raises frees it too
        with pytest.raises(sp.InputError, match="masked out as padding"):
            model(**{**inputs, "attention_mask": torch.zeros_like(inputs["attention_mask"])})
        model(**inputs)


# ---------------------------------------------------------------------------------------------- batches, media, dtypes


def test_a_sample_without_video_in_a_video_batch_is_named():
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3, 3], [4, 4])
    input_ids = inputs["input_ids"].clone()
    input_ids[1][input_ids[1] == VIDEO_TOKEN_ID] = 5  # sample 1 becomes text only
    batch = {**inputs, "input_ids": input_ids, "pixel_values_videos": inputs["pixel_values_videos"][:1]}
    layers = []
    model.model.language_model.layers[0].register_forward_pre_hook(lambda *a: layers.append(1))
    with sp.apply(model, method="fastv", retention=0.25), pytest.raises(sp.InputError, match=r"sample\(s\) \[1\]"):
        model(**batch)
    assert layers == []


def test_images_beside_video_are_kept_and_only_video_is_pruned(tmp_path):
    """LLaVA-OneVision with an image and a video in one prompt: image tokens are never candidates."""
    import numpy as np
    from PIL import Image

    from sharp_prune.models.loading import load_model
    from sharp_prune.testing import tiny_llava_onevision_checkpoint

    model, processor = load_model(tiny_llava_onevision_checkpoint(tmp_path / "ckpt"), device="cpu")
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    content = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Is the picture in the clip?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=[image], videos=[video], return_tensors="pt")
    ids = inputs["input_ids"][0]
    image_positions = (ids == model.config.image_token_index).nonzero().flatten()
    video_count = int((ids == model.config.video_token_index).sum()) - 1  # LLaVA-OV's kept newline
    assert image_positions.numel() > 0
    with sp.apply(model, method="sharp", retention=0.25) as handle:
        model.generate(**inputs, max_new_tokens=2)
    record = handle.last
    assert record.num_visual == [video_count] and record.budget == [video_count // 4]
    assert not set(image_positions.tolist()) & set(record.visual_positions[0].tolist())
    assert record.kept_len == record.seq_len - (video_count - video_count // 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("method", ["sharp", "fastv", "feather", "divprune"])
def test_half_precision_models_prune_and_generate(dtype, method):
    model = tiny_model("qwen2_vl", dtype=dtype)
    inputs = tiny_inputs(model, [3], [4])
    with sp.apply(model, method=method, retention=0.25) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    n = handle.last.num_visual[0]
    assert handle.last.budget == [n // 4] and n == 64
    assert all(torch.isfinite(step).all() for step in out.logits)


# ---------------------------------------------------------------------------------------------- fuzzed video files

# SHARP_PRUNE_FUZZ_EXAMPLES raises the count for a longer search (the CI run uses 40).
_FUZZ = settings(
    max_examples=int(os.environ.get("SHARP_PRUNE_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_FUZZ
@given(data=st.binary(min_size=0, max_size=4096))
def test_random_bytes_are_a_video_error(tmp_path_factory, data):
    pytest.importorskip("av")
    from sharp_prune.video import read_frames

    path = tmp_path_factory.mktemp("fuzz") / "clip.mp4"
    path.write_bytes(data)
    with pytest.raises(sp.VideoError):
        read_frames(path, 4)


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    pytest.importorskip("av")
    from sharp_prune.testing import synthetic_video

    return synthetic_video(tmp_path_factory.mktemp("clip") / "clip.mp4", num_frames=12).read_bytes()


@_FUZZ
@given(data=st.data())
def test_damaged_videos_decode_or_raise_video_error(tmp_path_factory, clip_bytes, data):
    """A real clip with bytes overwritten or cut: either 4 frames of the right shape, or a VideoError."""
    from sharp_prune.video import read_frames

    damaged = bytearray(clip_bytes)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(damaged) - 1), label="length")]
    for _ in range(data.draw(st.integers(1, 16), label="flips")):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("damaged") / "clip.mp4"
    path.write_bytes(bytes(damaged))
    try:
        frames = read_frames(path, 4)
    except sp.VideoError:
        event("VideoError")
        return
    event("decoded")
    assert frames.shape[0] == 4 and frames.shape[-1] == 3 and frames.dtype.name == "uint8"
