"""Property-based tests (hypothesis) of whole pruned forwards: every method, adapter and stage.

Random methods, retentions, layers K, pre-stage on/off, batch sizes, prefix/suffix lengths, frame counts
and padding sides, on the tiny random-weight models of `sharp_prune.testing`. What a forward must
satisfy is read off the inputs, independently of the engine: where the video tokens are (from the
token ids), how many there are, the budget formula, and the logits of the unpatched model.

Models are built once per module (hypothesis re-runs the test body). Scale the example counts with
SHARP_PRUNE_PROPERTY_SCALE.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from property_settings import property_settings
from transformers import PreTrainedModel

import sharp_prune as sp
from sharp_prune.testing import PAD_ID, VIDEO_TOKEN_ID, TinyVideo, tiny_causal_lm, tiny_inputs, tiny_model

NUM_LAYERS = 4
METHODS = sp.available_methods()
FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl")
RETENTIONS = st.one_of(
    st.sampled_from([1.0, 1e-6, 0.001, 0.999, 0.5]),
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
)


@functools.cache
def _vlm(family: str) -> PreTrainedModel:
    """One tiny model per family for the whole module."""
    return tiny_model(family, num_layers=NUM_LAYERS)


@functools.cache
def _causal_lm() -> PreTrainedModel:
    """One tiny Llama for the generic adapter, for the whole module."""
    return tiny_causal_lm(num_layers=NUM_LAYERS)


@st.composite
def configs(draw: st.DrawFn, method: str | None = None) -> sp.PruneConfig:
    """A random valid `PruneConfig` (of `method`, or any) for a 4-layer model, pre-stage on or off."""
    method = draw(st.sampled_from(METHODS)) if method is None else method
    knobs: dict = dict(
        method=method,
        retention=draw(RETENTIONS),
        layer=draw(st.integers(1, NUM_LAYERS - 1)),
        seed=draw(st.integers(0, 2**31 - 1)),
        record_scores=draw(st.booleans()),
    )
    if draw(st.booleans()):
        # below 1: exact duplicates (cosine 1) are then dropped whatever the last bit of the cosine
        knobs.update(pre="temporal_merge", pre_threshold=draw(st.sampled_from([0.9, -1.0]) | st.floats(-1.0, 0.99)))
    if method == "sharp":
        knobs.update(
            sharp_query=draw(st.sampled_from(["text", "last"])),
            segm=draw(st.booleans()),
            segm_within=draw(st.sampled_from(["causal", "bidirectional"])),
            segm_tau=draw(st.sampled_from([0.9, 1.0, -1.0]) | st.floats(-1.0, 1.0)),
            segm_max_segments=draw(st.integers(1, 8)),
            posc=draw(st.booleans()),
            posc_prior=draw(st.sampled_from(["per_input", "cached"])),
            regd=draw(st.booleans()),
            regd_registers=draw(st.none() | st.integers(0, 4)),
        )
    return sp.PruneConfig(**knobs)


@dataclass
class Batch:
    """Model inputs plus the facts the checks need, computed from the token ids here."""

    inputs: dict[str, torch.Tensor]
    all_video_positions: list[list[int]]  # per sample, positions of the video's frame tokens
    visual_positions: list[list[int]]  # per sample, positions of the prunable video tokens (see `_prunable`)
    has_text_after_video: bool  # every sample has a real non-video token after its last video token
    mixed_end: bool  # some samples, not all, end with a video token: refused (see `_prunable`)


def _prunable(visual: list[list[int]], last: list[int]) -> tuple[list[list[int]], bool]:
    """The prompt's last token is never pruned: a video token there leaves the prunable set.

    Returns the prunable positions per sample, and whether the batch mixes samples that end with a video token
    and samples that do not (then they would keep different counts, and the forward is refused).
    """
    ends = [bool(v) and v[-1] == end for v, end in zip(visual, last, strict=True)]
    if any(ends) and not all(ends):
        return visual, True
    return ([v[:-1] for v in visual] if all(ends) else visual), False


def _video_rows(family: str, inputs: dict[str, torch.Tensor], frames: int, sample: int, frame: int) -> tuple:
    """Index of one frame of one sample's video in `pixel_values_videos`."""
    if family == "llava_onevision":
        return (sample, frame)
    per_frame = int(inputs["video_grid_thw"][sample, 1:].prod())
    start = (sample * frames + frame) * per_frame
    return (slice(start, start + per_frame),)


@st.composite
def batches(draw: st.DrawFn, family: str, pre: bool) -> Batch:
    """Text prefix + video + text suffix per sample (lengths may be 0), padded left or right.

    With the pre-stage, every sample gets the same video with some frames repeated, so that temporal
    merging has duplicates to drop and keeps the same count in every sample (its batching rule).
    """
    model = _vlm(family)
    b = draw(st.integers(1, 2))
    prefix = draw(st.lists(st.integers(0, 4), min_size=b, max_size=b))
    suffix = draw(st.lists(st.integers(0, 3), min_size=b, max_size=b))
    frames = draw(st.integers(1, 3))
    grid = draw(st.integers(1, 3))
    side = draw(st.sampled_from(["left", "right"]))
    if family == "qwen2_5_vl" and frames * grid * grid + max(p + s for p, s in zip(prefix, suffix, strict=True)) < b:
        # transformers' Qwen2.5-VL rope index sizes its default frame-interval list by the sequence length,
        # not by the videos: a batch longer than its sequences raises StopIteration, unpruned too
        suffix = [s + 1 for s in suffix]
    inputs = tiny_inputs(
        model, prefix, suffix, TinyVideo(frames=frames, grid=grid), padding_side=side, seed=draw(st.integers(0, 999))
    )
    if pre:
        pixels = inputs["pixel_values_videos"]

        def rows(sample: int, frame: int) -> tuple:
            return _video_rows(family, inputs, frames, sample, frame)

        for f in range(1, frames):
            if draw(st.booleans()):  # frame f repeats frame f - 1
                pixels[rows(0, f)] = pixels[rows(0, f - 1)]
        for i in range(1, b):
            for f in range(frames):
                pixels[rows(i, f)] = pixels[rows(0, f)]
    ids, valid = inputs["input_ids"], inputs["attention_mask"].bool()
    visual, text_after = [], True
    for row in range(b):
        video = (ids[row] == VIDEO_TOKEN_ID).nonzero().flatten().tolist()
        after = torch.arange(ids.shape[1]) > video[-1]  # LLaVA-OV: after the trailing newline
        text_after &= bool((after & valid[row]).any())
        if family == "llava_onevision":
            video = video[:-1]  # the trailing newline token is never pruned
        visual.append(video)
    last = [int(valid[row].nonzero().max()) for row in range(b)]
    prunable, mixed = _prunable(visual, last)
    return Batch(
        inputs=inputs,
        all_video_positions=visual,
        visual_positions=prunable,
        has_text_after_video=text_after,
        mixed_end=mixed,
    )


def _check_record(record: sp.PruneRecord, config: sp.PruneConfig, visual_positions: list[list[int]]) -> None:
    """What a record must say about one prefill, from the config and the video positions found here."""
    b = len(visual_positions)
    n = len(visual_positions[0])
    if n == 0:  # the video was one token, and the prompt's last: nothing to prune
        assert record.num_visual == [0] * b and record.kept_len == record.seq_len
        return
    # what the examples exercised, in --hypothesis-show-statistics
    event(f"pre-stage dropped tokens: {record.pre_kept is not None}")
    event(f"registers: {record.is_register is not None and any(bool(r.any()) for r in record.is_register)}")
    event(f"N <= 3: {n <= 3}")
    assert record.num_visual == [n] * b
    assert [p.tolist() for p in record.visual_positions] == visual_positions
    scored = n
    if record.pre_kept is not None:
        assert config.pre is not None
        assert len(record.pre_keep_positions) == b
        scored = record.pre_kept[0]
        assert 1 <= scored < n and record.pre_kept == [scored] * b
        for row in range(b):
            pre = record.pre_keep_positions[row].tolist()
            assert len(pre) == scored and pre == sorted(set(pre)) and set(pre) <= set(visual_positions[row])
    budget = scored if config.method == "none" else config.budget(scored)
    assert record.budget == [budget] * b
    assert record.kept_len == record.seq_len - (n - budget)
    for row in range(b):
        keep = record.keep_positions[row].tolist()
        assert len(keep) == budget and keep == sorted(set(keep)), "keep positions must be sorted and unique"
        allowed = record.pre_keep_positions[row].tolist() if record.pre_kept is not None else visual_positions[row]
        assert set(keep) <= set(allowed), "a kept position is not a (pre-kept) video position"
        if record.is_register is not None:
            assert record.is_register[row].shape == (budget,) and record.is_register[row].dtype == torch.bool
        # per-token fields describe the tokens the LLM scored: all of them, or those the pre-stage kept
        for name in ("scores", "raw_scores", "prior", "segment_ids"):
            values = getattr(record, name)
            if values is not None:
                assert values[row].shape == (scored,), f"record.{name} is not aligned with the scored tokens"
    if config.method == "sharp" and config.regd and record.is_register is not None:
        for row in range(b):
            segments = record.segment_ids[row]
            scored_positions = record.pre_keep_positions[row] if record.pre_kept is not None else None
            positions = scored_positions if scored_positions is not None else torch.tensor(visual_positions[row])
            slots = record.keep_positions[row][record.is_register[row]]
            register_segments = segments[torch.searchsorted(positions, slots)].tolist()
            assert len(register_segments) == len(set(register_segments)), "two registers in one segment"


def _keeps_everything(record: sp.PruneRecord, config: sp.PruneConfig) -> bool:
    """Whether the forward must equal the unpatched one: every video token kept, no pre-stage drop, and no
    SegM mask (which changes layers < K by design)."""
    segm = config.method == "sharp" and config.segm
    return record.budget == record.num_visual and record.pre_kept is None and not segm


def _forward(model: PreTrainedModel, inputs: dict[str, torch.Tensor], **extra: object) -> torch.Tensor:
    """Logits of one no-grad forward."""
    with torch.no_grad():
        return model(**inputs, **extra).logits


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
@property_settings(25)
def test_pruned_forward_keeps_what_the_record_says_and_remove_restores(method: str, data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(FAMILIES), label="family")
    event(f"family={family}")
    model = _vlm(family)
    config = data.draw(configs(method), label="config")
    batch = data.draw(batches(family, pre=config.pre is not None), label="batch")
    reference = _forward(model, batch.inputs)
    handle = sp.apply(model, config)
    try:
        if batch.mixed_end:
            with pytest.raises(sp.InputError, match="end with a video token and the others do not"):
                _forward(model, batch.inputs)
            event("refused: some samples end with a video token")
            return
        needs_text = config.method == "sharp" and config.sharp_query == "text"
        if needs_text and not batch.has_text_after_video and batch.visual_positions[0]:
            with pytest.raises(sp.InputError, match="text token after the last video token"):
                _forward(model, batch.inputs)
            event("refused: no text after the video")
            return
        first = _forward(model, batch.inputs)
        record = handle.last
        second = _forward(model, batch.inputs)
        again = handle.last
    finally:
        handle.remove()
    _check_record(record, config, batch.visual_positions)
    assert first.shape[:2] == (len(batch.visual_positions), record.kept_len)
    assert bool(torch.isfinite(first).all())
    # same input and seed: the same plan and the same logits
    assert all(torch.equal(a, b) for a, b in zip(record.keep_positions, again.keep_positions, strict=True))
    assert torch.equal(first, second)
    if _keeps_everything(record, config):  # e.g. retention 1, or `none`: the identity
        assert torch.equal(first, reference)
    # remove() gives back the model exactly as it was
    assert torch.equal(_forward(model, batch.inputs), reference)


@st.composite
def generic_batches(
    draw: st.DrawFn,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[list[int]], bool, list[int]]:
    """Token ids, attention mask and a frame map for the generic adapter.

    One sample uses `frame_map_for_span`; a padded batch of samples with different prefixes builds its
    map row by row. Returns (inputs, frame_map, visual positions per sample, text after every video, the last
    real position of each sample).
    """
    frames = draw(st.integers(1, 4))
    per_frame = draw(st.integers(1, 6))
    span = frames * per_frame
    gen = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    if draw(st.booleans()):
        prefix, suffix = draw(st.integers(0, 5)), draw(st.integers(0, 4))
        seq_len = prefix + span + suffix
        ids = torch.randint(3, 200, (1, seq_len), generator=gen)
        frame_map = sp.frame_map_for_span(seq_len, start=prefix, num_frames=frames, tokens_per_frame=per_frame)
        visual = [list(range(prefix, prefix + span))]
        return {"input_ids": ids}, frame_map, visual, suffix > 0, [seq_len - 1]
    b = draw(st.integers(2, 3))
    prefixes = draw(st.lists(st.integers(0, 5), min_size=b, max_size=b))
    suffixes = draw(st.lists(st.integers(0, 4), min_size=b, max_size=b))
    side = draw(st.sampled_from(["left", "right"]))
    width = max(p + span + s for p, s in zip(prefixes, suffixes, strict=True))
    ids = torch.full((b, width), PAD_ID)
    mask = torch.zeros(b, width, dtype=torch.long)
    frame_map = torch.full((b, width), -1)
    visual = []
    for i, (p, s) in enumerate(zip(prefixes, suffixes, strict=True)):
        length = p + span + s
        start = width - length if side == "left" else 0
        ids[i, start : start + length] = torch.randint(3, 200, (length,), generator=gen)
        mask[i, start : start + length] = 1
        frame_map[i, start + p : start + p + span] = torch.arange(frames).repeat_interleave(per_frame)
        visual.append(list(range(start + p, start + p + span)))
    last = [int(mask[i].nonzero().max()) for i in range(b)]
    return {"input_ids": ids, "attention_mask": mask}, frame_map, visual, min(suffixes) > 0, last


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
@property_settings(10)
def test_generic_adapter_forward_keeps_what_the_record_says_and_remove_restores(
    method: str, data: st.DataObject
) -> None:
    config = data.draw(configs(method), label="config")
    inputs, frame_map, visual, text_after, last = data.draw(generic_batches(), label="batch")
    visual, mixed = _prunable(visual, last)
    model = _causal_lm()
    reference = _forward(model, inputs)
    handle = sp.apply(model, config)
    try:
        with handle.visual_frames(frame_map):
            if mixed:
                with pytest.raises(sp.InputError, match="end with a video token and the others do not"):
                    _forward(model, inputs)
                event("refused: some samples end with a video token")
                return
            if config.method == "sharp" and config.sharp_query == "text" and not text_after and visual[0]:
                with pytest.raises(sp.InputError, match="text token after the last video token"):
                    _forward(model, inputs)
                event("refused: no text after the video")
                return
            try:
                first = _forward(model, inputs)
            except sp.InputError as error:
                # temporal merging may keep different counts in the samples of a batch: refused, by design
                assert config.pre is not None and "same number" in str(error)
                event("refused: pre-stage counts differ across the batch")
                return
            record = handle.last
            second = _forward(model, inputs)
            again = handle.last
            generated = None
            if "attention_mask" not in inputs or bool(inputs["attention_mask"][:, -1].all()):
                # decoding reads the pruned cache (and the pre-stage's shorter one): its first token comes
                # from the prefill's last logits
                with torch.no_grad():
                    generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
                assert all(
                    torch.equal(a, b) for a, b in zip(record.keep_positions, handle.last.keep_positions, strict=True)
                )
        outside = _forward(model, inputs)  # no declaration: nothing is visual, nothing is pruned
    finally:
        handle.remove()
    _check_record(record, config, visual)
    assert first.shape[:2] == (len(visual), record.kept_len) and bool(torch.isfinite(first).all())
    assert all(torch.equal(a, b) for a, b in zip(record.keep_positions, again.keep_positions, strict=True))
    assert torch.equal(first, second)
    if _keeps_everything(record, config):
        assert torch.equal(first, reference)
    if generated is not None:
        length = inputs["input_ids"].shape[1]
        assert generated.shape == (len(visual), length + 2)
        assert torch.equal(generated[:, length], first[:, -1].argmax(dim=-1))
    assert torch.equal(outside, reference)
    assert torch.equal(_forward(model, inputs), reference)


def _check_blank_pass(
    model: PreTrainedModel, config: sp.PruneConfig, inputs: dict[str, torch.Tensor], visual_positions: list[list[int]]
) -> sp.PruneRecord:
    """Run one pruned forward and check PosC's content-free copy token by token; returns the record.

    The blank pass is the second call of decoder layer 0 in the forward (the first is the real pass). Each
    scored video token must hold the black frame's token at its own place in its frame (raster order,
    counted over all of the frame's tokens, whatever the pre-stage dropped).
    """
    layer0 = model.model.language_model.layers[0]
    seen: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    hook = layer0.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with sp.apply(model, config) as handle:
            _forward(model, inputs)
            record = handle.last
            layout = sp.VisualLayout(record.visual_positions[0][None], record.frame_ids[0][None], record.grid)
            blank = handle.adapter.blank_frame(model, layout, None)
    finally:
        hook.remove()
    assert len(seen) == 2, "expected the real pass and PosC's blank pass through layer 0"
    frames = int(record.frame_ids[0].max()) + 1
    for row, visual in enumerate(visual_positions):
        per_frame = len(visual) // frames
        scored = record.pre_keep_positions[row].tolist() if record.pre_kept is not None else None
        scored = scored if scored is not None else record.visual_positions[row].tolist()
        dropped = set(visual) - set(scored)
        # the blank pass runs on the sequence the pre-stage left: original positions minus the dropped ones
        entering = [p for p in range(record.seq_len) if p not in dropped]
        for position in scored:
            place = visual.index(position) % per_frame
            got = seen[1][row, entering.index(position)]
            torch.testing.assert_close(got, blank[place % blank.shape[0]].to(got.dtype), msg=f"token at {position}")
    return record


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
@property_settings(15)
def test_posc_blank_pass_puts_each_token_of_the_black_frame_in_its_place(family: str, data: st.DataObject) -> None:
    """PosC's content-free copy gives every scored video token the black frame's token at the same place in
    its frame (docs/method.md), also when the pre-LLM stage dropped earlier tokens of that frame."""
    model = _vlm(family)
    config = data.draw(configs(), label="config").replace(method="sharp", posc=True, sharp_query="last")
    batch = data.draw(batches(family, pre=config.pre is not None), label="batch")
    if batch.mixed_end or not batch.visual_positions[0]:
        event("skipped: refused batch, or nothing prunable")
        return
    record = _check_blank_pass(model, config, batch.inputs, batch.all_video_positions)
    event(f"pre-stage dropped tokens: {record.pre_kept is not None}")


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
@property_settings(10)
def test_generate_prefill_makes_the_forward_plan_and_decodes_from_its_logits(family: str, data: st.DataObject) -> None:
    """`generate` prunes its prefill exactly as a forward does (Qwen-VL: frames found from the 3-D positions
    generate passes, not from the grid), and its first token is the forward's last-position argmax."""
    model = _vlm(family)
    config = data.draw(configs(), label="config")
    batch = data.draw(batches(family, pre=config.pre is not None), label="batch")
    needs_text = config.method == "sharp" and config.sharp_query == "text"
    # generate appends after the last column: left padding keeps every sample's last token there
    left_padded = bool(batch.inputs["attention_mask"][:, -1].all())
    if (needs_text and not batch.has_text_after_video) or not left_padded or batch.mixed_end:
        event("skipped: no text after the video, or right padding")
        return
    with sp.apply(model, config) as handle, torch.no_grad():
        logits = model(**batch.inputs).logits
        forward_record = handle.last
        tokens = model.generate(**batch.inputs, max_new_tokens=3, do_sample=False)
        generate_record = handle.last
    length = batch.inputs["input_ids"].shape[1]
    assert tokens.shape == (len(batch.visual_positions), length + 3)
    assert torch.equal(tokens[:, length], logits[:, -1].argmax(dim=-1))
    for a, b in zip(forward_record.keep_positions, generate_record.keep_positions, strict=True):
        assert torch.equal(a, b)
    assert generate_record.budget == forward_record.budget and generate_record.kept_len == forward_record.kept_len
    event(f"pre-stage dropped tokens: {forward_record.pre_kept is not None}")


# ----------------------------------------------------------------------------- regressions (shrunk cases)
def test_regression_posc_blank_tokens_keep_their_place_after_the_pre_stage() -> None:
    """Shrunk from the property above: LLaVA-OV, 2 frames, no text, pre_threshold=0 drops part of frame 1.

    The blank pass used to give the i-th survivor of a frame the blank frame's token i, not the token at
    the survivor's own place, so the prior scored a shifted black frame.
    """
    model = _vlm("llava_onevision")
    inputs = tiny_inputs(model, [0], [0], TinyVideo(frames=2))
    config = sp.PruneConfig(
        method="sharp", retention=1.0, layer=1, sharp_query="last", pre="temporal_merge", pre_threshold=0.0
    )
    visual = (inputs["input_ids"][0] == VIDEO_TOKEN_ID).nonzero().flatten().tolist()[:-1]
    record = _check_blank_pass(model, config, inputs, [visual])
    # the case is only a test if a survivor of frame 1 sits after a dropped token of that frame
    frame1 = visual[16:]
    survivors = set(record.pre_keep_positions[0].tolist())
    first_drop = min(p for p in frame1 if p not in survivors)
    assert any(p > first_drop for p in frame1 if p in survivors)


def _qwen_inputs(
    model: PreTrainedModel, text: list[int], split: int, frames: int, grid: tuple[int, int], seed: int
) -> dict[str, torch.Tensor]:
    """One unpadded Qwen-VL sample `text[:split] + video + text[split:]` with a (possibly non-square) grid."""
    vision = model.config.vision_config
    merge, patch, temporal = vision.spatial_merge_size, vision.patch_size, vision.temporal_patch_size
    h, w = grid[0] * merge, grid[1] * merge
    video = [VIDEO_TOKEN_ID] * (frames * grid[0] * grid[1])
    input_ids = torch.tensor([text[:split] + video + text[split:]])
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": torch.randn(frames * h * w, 3 * temporal * patch * patch, generator=gen),
        "video_grid_thw": torch.tensor([[frames, h, w]]),
        "mm_token_type_ids": (input_ids == VIDEO_TOKEN_ID).int() * 2,
    }


def _prior_of(model: PreTrainedModel, handle: sp.PruneHandle, inputs: dict, frame_map: torch.Tensor | None) -> list:
    """The PosC prior `handle` records for one forward of `inputs`."""
    if frame_map is None:
        _forward(model, inputs)
    else:
        with handle.visual_frames(frame_map):
            _forward(model, inputs)
    return handle.last.prior


@st.composite
def same_key_layouts(draw: st.DrawFn) -> tuple[str, list[tuple[dict, torch.Tensor | None]]]:
    """Calls whose token layouts differ only in ways a cache key may forget, with different videos each.

    Qwen-VL: the same token counts with the grid (h, w) or (w, h). Generic adapter: the same frame sizes,
    first video position and query rows, with separator tokens between different frames.
    """
    family = draw(st.sampled_from(["generic", "qwen2_vl", "qwen2_5_vl"]))
    text = draw(st.lists(st.integers(3, 199), min_size=3, max_size=8))
    split = draw(st.integers(1, len(text) - 1))
    calls = []
    if family == "generic":
        frames, per_frame = draw(st.integers(2, 4)), draw(st.integers(1, 4))
        separators = draw(st.integers(0, frames - 1))  # how many frame boundaries carry a separator
        for _ in range(draw(st.integers(2, 3))):
            where = sorted(draw(st.permutations(range(1, frames)))[:separators])
            ids, frame_map = list(text[:split]), [-1] * split
            for f in range(frames):
                if f in where:
                    ids.append(7)
                    frame_map.append(-1)
                ids += draw(st.lists(st.integers(3, 199), min_size=per_frame, max_size=per_frame))  # the video
                frame_map += [f] * per_frame
            ids += text[split:]
            frame_map += [-1] * (len(text) - split)
            calls.append(({"input_ids": torch.tensor([ids])}, torch.tensor([frame_map])))
        return family, calls
    frames, side_a, side_b = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    for _ in range(draw(st.integers(2, 3))):
        grid = draw(st.sampled_from([(side_a, side_b), (side_b, side_a)]))
        calls.append((_qwen_inputs(_vlm(family), text, split, frames, grid, draw(st.integers(0, 999))), None))
    return family, calls


@given(case=same_key_layouts())
@property_settings(20)
def test_cached_prior_equals_the_per_input_prior_when_only_the_video_changes(case: tuple) -> None:
    """PosC's cached prior is exact when only the video changes and SegM is off (docs/method.md): a call
    whose layout differs from a cached one must not get that one's prior."""
    family, calls = case
    model = _causal_lm() if family == "generic" else _vlm(family)
    config = sp.PruneConfig(method="sharp", retention=0.5, layer=2, segm=False, regd=False, record_scores=True)
    fresh = []
    with sp.apply(model, config) as handle:  # per_input: the definition
        for inputs, frame_map in calls:
            fresh.append(_prior_of(model, handle, inputs, frame_map))
    with sp.apply(model, config.replace(posc_prior="cached")) as handle:
        for (inputs, frame_map), expected in zip(calls, fresh, strict=True):
            got = _prior_of(model, handle, inputs, frame_map)
            torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=1e-5)


def _per_input_and_cached_priors(model: PreTrainedModel, calls: list[tuple[dict, torch.Tensor | None]]) -> tuple:
    """Priors of the last call, from a per-input handle and from a cached one that saw the earlier calls."""
    config = sp.PruneConfig(method="sharp", retention=0.5, layer=2, segm=False, regd=False, record_scores=True)
    with sp.apply(model, config) as handle:
        expected = _prior_of(model, handle, *calls[-1])
    with sp.apply(model, config.replace(posc_prior="cached")) as handle:
        for inputs, frame_map in calls:
            got = _prior_of(model, handle, inputs, frame_map)
    return got[0], expected[0]


def test_regression_cached_prior_is_not_shared_by_transposed_grids() -> None:
    """Shrunk: Qwen2-VL, one frame of 1 x 2 merged tokens, then one of 2 x 1, same text. The cache key had
    token counts but not the grid, so the second call got the first one's prior (different blank frame
    and M-RoPE positions)."""
    model = _vlm("qwen2_vl")
    calls = [(_qwen_inputs(model, [3, 3, 3], 1, 1, grid, seed=0), None) for grid in ((1, 2), (2, 1))]
    got, expected = _per_input_and_cached_priors(model, calls)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_regression_cached_prior_is_not_shared_when_separators_move() -> None:
    """Generic adapter, 3 frames of 2 tokens with one separator token after frame 0, then after frame 1:
    same first video position, frame sizes and query rows. The key held only the first video position."""

    def call(separator_before: int) -> tuple[dict, torch.Tensor]:
        ids, frame_map = [5, 6], [-1, -1]
        for f in range(3):
            if f == separator_before:
                ids, frame_map = [*ids, 7], [*frame_map, -1]
            ids, frame_map = [*ids, 20 + 2 * f, 21 + 2 * f], [*frame_map, f, f]
        return {"input_ids": torch.tensor([[*ids, 8, 9]])}, torch.tensor([[*frame_map, -1, -1]])

    got, expected = _per_input_and_cached_priors(_causal_lm(), [call(1), call(2)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
