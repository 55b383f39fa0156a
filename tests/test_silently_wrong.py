"""Regressions: inputs that once gave silently wrong results now give the right result or a clear error.

Each test names the case it pins down. Every one failed on the code before the fix (checked by running this file
against that commit).
"""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from reference import reference_logits

import sharp_prune as sp
from sharp_prune.methods.sharp.segm import segment_mask
from sharp_prune.testing import PAD_ID, tiny_causal_lm, tiny_inputs, tiny_model

LAYER = 2


def _text_and_kept(record: sp.PruneRecord, seq_len: int) -> torch.Tensor:
    """Every position the pruned forward must keep, from the record's video positions: text, kept video, last."""
    visual = set(record.visual_positions[0].tolist())
    kept = set(record.keep_positions[0].tolist())
    return torch.tensor([p for p in range(seq_len) if p not in visual or p in kept])


# ----------------------------------------------------------------------------- 1. the last token
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_prompt_ending_in_video_tokens_keeps_its_last_token(family):
    """Case 1: with no text after the video, position L-1 was pruned and the logits came from an earlier token."""
    model = tiny_model(family)
    inputs = tiny_inputs(model, [3], [0])
    seq_len = inputs["input_ids"].shape[1]
    with sp.apply(model, method="fastv", retention=0.25, layer=LAYER) as handle, torch.no_grad():
        pruned = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    record = handle.last
    keep = _text_and_kept(record, seq_len)
    assert int(keep[-1]) == seq_len - 1 and record.output_positions[0].tolist() == keep.tolist()
    assert record.num_visual == [63] and seq_len - 1 not in record.keep_positions[0].tolist()
    expected = reference_logits(model, handle.adapter.decoder(model), inputs, keep, LAYER)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)
    assert int(generated[0, -1]) == int(pruned[0, -1].argmax())


def test_a_sequence_that_is_all_video_keeps_its_last_token():
    """Case 1, generic adapter: the whole sequence declared visual."""
    model = tiny_causal_lm(num_layers=4)
    ids = torch.randint(3, 200, (1, 24), generator=torch.Generator().manual_seed(0))
    handle = sp.apply(model, method="fastv", retention=0.25, layer=LAYER)
    with handle, handle.visual_frames(sp.frame_map_for_span(24, 0, 4, 6)), torch.no_grad():
        pruned = model(input_ids=ids).logits
    keep = _text_and_kept(handle.last, 24)
    assert int(keep[-1]) == 23 and handle.last.num_visual == [23]
    expected = reference_logits(model, model.model, {"input_ids": ids}, keep, LAYER)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_llava_onevision_without_text_after_the_video_behaves_like_qwen():
    """Both keep the last token; text-query ShaRP refuses both the same way (the newline is not a question)."""
    for family in ("llava_onevision", "qwen2_vl"):
        model = tiny_model(family)
        inputs = tiny_inputs(model, [3], [0])
        seq_len = inputs["input_ids"].shape[1]
        with sp.apply(model, method="fastv", retention=0.25) as handle, torch.no_grad():
            assert model(**inputs).logits.shape[1] == handle.last.kept_len
        assert int(handle.last.output_positions[0][-1]) == seq_len - 1
        refused = pytest.raises(sp.InputError, match="text token after the last video token")
        with sp.apply(model, method="sharp", retention=0.25), torch.no_grad(), refused:
            model(**inputs)


# ----------------------------------------------------------------------------- 2. bool frame maps
def test_a_bool_mask_is_not_taken_for_a_frame_map():
    """Case 2: False read as frame 0, so text was pruned as video."""
    model = tiny_causal_lm()
    handle = sp.apply(model, method="fastv", retention=0.25)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 5:] = True
    with pytest.raises(sp.InputError, match="bool mask"):
        handle.set_visual_frames(mask)
    with pytest.raises(sp.InputError, match="below -1"):
        handle.set_visual_frames(torch.full((1, 10), -2))
    handle.remove()


# ----------------------------------------------------------------------------- 3. output_attentions
def test_output_attentions_under_sharp_has_one_entry_per_layer_with_segm_weights():
    """Case 3: layers < K were missing (and PosC's blank pass would have added two more)."""
    model = tiny_model("qwen2_vl", num_layers=4, attn_implementation="eager")
    inputs = tiny_inputs(model, [3], [4])
    seq_len = inputs["input_ids"].shape[1]
    config = sp.PruneConfig(method="sharp", retention=0.25, layer=LAYER, segm_tau=1.0, record_scores=True)
    handle = sp.apply(model, config)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    handle.remove()
    # SegM's map, rebuilt from the record: each video token's segment, -1 elsewhere
    segment_map = {"map": torch.full((1, seq_len), -1, dtype=torch.long)}
    segment_map["map"][0, handle.last.visual_positions[0]] = handle.last.segment_ids[0]
    kept = handle.last.kept_len
    assert [a.shape[-1] for a in out.attentions] == [seq_len, seq_len, kept, kept]
    allowed = segment_mask(segment_map["map"], None)[0, 0]
    assert int(segment_map["map"].max()) > 0, "several segments, so the SegM mask differs from a causal one"
    for weights in out.attentions[:LAYER]:
        assert float(weights[0][:, ~allowed].abs().max()) == 0.0  # SegM's mask, not the causal one
        torch.testing.assert_close(weights[0].sum(-1), torch.ones(weights.shape[1], seq_len))


# ----------------------------------------------------------------------------- 4, 5. declarations
def test_nested_frame_declarations_restore_the_outer_one():
    """Case 4: leaving the inner block cleared the outer declaration; the next forward ran unpruned."""
    model = tiny_causal_lm()
    ids = torch.randint(3, 200, (1, 20))
    outer = sp.frame_map_for_span(20, 2, 2, 4)
    inner = sp.frame_map_for_span(20, 4, 1, 4)
    handle = sp.apply(model, method="fastv", retention=0.25)
    with torch.no_grad(), handle.visual_frames(outer):
        with handle.visual_frames(inner):
            model(ids)
            assert handle.last.num_visual == [4]
        model(ids)
        assert handle.last.num_visual == [8]
    model(ids)
    assert handle.last.num_visual == [0]
    handle.remove()


def test_a_frame_declaration_belongs_to_its_thread():
    """Case 5: a forward in thread A used the map thread B had declared."""
    model = tiny_causal_lm()
    ids = torch.randint(3, 200, (1, 20))
    handle = sp.apply(model, method="fastv", retention=0.25)
    declared, done = threading.Event(), threading.Event()

    def other_thread():
        handle.set_visual_frames(sp.frame_map_for_span(20, 2, 2, 4))
        declared.set()
        done.wait(timeout=30)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert declared.wait(timeout=30)
    with torch.no_grad():
        logits = model(ids).logits
    done.set()
    thread.join()
    assert handle.last.num_visual == [0] and logits.shape[1] == 20
    handle.remove()


# ----------------------------------------------------------------------------- 6, 7. lifecycle
def test_entering_a_removed_handle_again_prunes_again():
    """Case 6: the second `with handle:` ran unpruned and showed the old record."""
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3], [4])
    handle = sp.apply(model, method="fastv", retention=0.25)
    with handle, torch.no_grad():
        model(**inputs)
    first = handle.last
    assert not handle.active
    with handle, torch.no_grad():
        assert handle.active
        logits = model(**inputs).logits
    assert handle.last is not first and logits.shape[1] == handle.last.kept_len < inputs["input_ids"].shape[1]
    assert not handle.active


def test_reattach_restores_the_implementation_the_model_had_when_reattached():
    """Case 7: remove, switch to eager, reattach, remove left the text decoder on sdpa."""
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3], [4])
    handle = sp.apply(model, method="fastv", retention=0.25)
    handle.remove()
    model.set_attn_implementation("eager")
    handle.reattach()
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    assert model.config.text_config._attn_implementation == "eager"
    assert model.model.language_model.config._attn_implementation == "eager"


def test_a_pruned_model_cannot_be_copied_or_pickled_but_a_removed_one_can():
    model = tiny_model("qwen2_vl")
    handle = sp.apply(model, method="fastv")
    with pytest.raises(sp.AlreadyAppliedError, match="remove"):
        copy.deepcopy(model)
    with pytest.raises(sp.AlreadyAppliedError, match="remove"):
        pickle.dumps(handle)
    handle.remove()
    clone = copy.deepcopy(model)
    inputs = tiny_inputs(model, [3], [4])
    with torch.no_grad():
        torch.testing.assert_close(clone(**inputs).logits, model(**inputs).logits)
    assert sum(len(m._forward_pre_hooks) for m in clone.modules()) == sum(
        len(m._forward_pre_hooks) for m in model.modules()
    )


# ----------------------------------------------------------------------------- errors a user can act on
def test_a_misspelt_field_names_the_right_one():
    model = tiny_model("qwen2_vl")
    with pytest.raises(sp.ConfigError, match="did you mean 'retention'"):
        sp.apply(model, retension=0.2)
    with pytest.raises(sp.ConfigError, match="did you mean 'retention'"):
        sp.PruneConfig(retension=0.2)
    with pytest.raises(sp.ConfigTypeError, match="field names are strings"):
        sp.PruneConfig.from_dict({1: 0.2})
    with pytest.raises(sp.InputError, match="num_frames must be an int"):
        sp.frame_map_for_span(20, 0, 2.0, 4)


def test_a_blank_token_beyond_the_vocabulary_is_refused_at_apply():
    model = tiny_causal_lm()
    hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(sp.ConfigError, match="outside this model's vocabulary"):
        sp.apply(model, method="sharp", posc_blank_token_id=10_000)
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks


def test_int32_token_ids_prune_like_int64():
    model = tiny_model("llava_onevision")
    inputs = tiny_inputs(model, [3], [4])
    with sp.apply(model, method="sharp", retention=0.25), torch.no_grad():
        wide = model(**inputs).logits
        narrow = model(**{**inputs, "input_ids": inputs["input_ids"].int()}).logits
    torch.testing.assert_close(narrow, wide)


def test_a_qwen_batch_of_different_frame_sizes_is_refused_before_layer_0():
    model = tiny_model("qwen2_vl")
    a = tiny_inputs(model, [3], [4])  # 4 frames of 4 x 4 tokens
    merge, patch, temporal = 2, 4, 2
    ids = a["input_ids"]
    inputs = {
        "input_ids": torch.cat([ids, ids]),
        "attention_mask": torch.cat([a["attention_mask"]] * 2),
        "mm_token_type_ids": torch.cat([a["mm_token_type_ids"]] * 2),
        # same token count (4 x 4 x 4 = 64), different grids: 4 x (8 x 8) patches, and 1 x (16 x 16)
        "video_grid_thw": torch.tensor([[4, 8, 8], [1, 16, 16]]),
        "pixel_values_videos": torch.randn(4 * 64 + 256, 3 * temporal * patch * patch),
    }
    assert merge == model.config.vision_config.spatial_merge_size
    calls = []
    hook = model.model.language_model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    refused = pytest.raises(sp.InputError, match="different frame sizes.*posc=False")
    with sp.apply(model, method="sharp", retention=0.25), torch.no_grad(), refused:
        model(**inputs)
    hook.remove()
    assert not calls, "refused after layer 0 ran"


def test_beams_widen_the_batch_of_a_declared_frame_map():
    model = tiny_causal_lm()
    ids = torch.randint(3, 200, (2, 20), generator=torch.Generator().manual_seed(3))
    handle = sp.apply(model, method="fastv", retention=0.25)
    one_row = sp.frame_map_for_span(20, 2, 2, 4)
    with torch.no_grad(), handle.visual_frames(one_row):  # one row stands for every row, beams included
        model.generate(input_ids=ids[:1], max_new_tokens=2, num_beams=2, do_sample=False, pad_token_id=PAD_ID)
        assert handle.last.num_visual == [8, 8]
    two_rows = sp.frame_map_for_span(20, 2, 2, 4, batch_size=2)
    with torch.no_grad(), handle.visual_frames(two_rows), pytest.raises(sp.InputError, match="num_beams"):
        model.generate(input_ids=ids, max_new_tokens=2, num_beams=2, do_sample=False, pad_token_id=PAD_ID)
    handle.remove()
