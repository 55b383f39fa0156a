"""SegM: segmentation of frames, and the block-wise masked attention against a dense-mask reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharp_prune.methods.sharp.segm import frame_descriptors, segment_attention, segment_frames, segment_mask


def _scenes(lengths: list[int], dim: int = 32, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Frame descriptors of planted scenes: each scene a random direction, frames jittered around it."""
    gen = torch.Generator().manual_seed(seed)
    frames = []
    for length in lengths:
        centre = torch.randn(dim, generator=gen)
        frames += [centre + noise * torch.randn(dim, generator=gen) for _ in range(length)]
    return F.normalize(torch.stack(frames), dim=-1)


def test_segmentation_finds_planted_cuts():
    descriptors = _scenes([4, 3, 5, 2])
    segments = segment_frames(descriptors, tau=0.9, max_segments=8)
    assert segments.tolist() == [0] * 4 + [1] * 3 + [2] * 5 + [3] * 2


def test_segmentation_respects_the_cap_keeping_the_sharpest_cuts():
    descriptors = _scenes([3, 3, 3, 3, 3])
    similarity = (descriptors[:-1] * descriptors[1:]).sum(-1)
    segments = segment_frames(descriptors, tau=0.9, max_segments=3)
    assert int(segments.max()) + 1 == 3
    cut_after = (segments.diff() == 1).nonzero().flatten()
    # the two cuts kept are the two lowest-similarity boundaries
    assert set(cut_after.tolist()) == set(similarity.argsort()[:2].tolist())
    assert segment_frames(descriptors, tau=0.9, max_segments=1).unique().tolist() == [0]


def test_one_static_scene_is_one_segment():
    assert segment_frames(_scenes([6]), tau=0.9, max_segments=8).tolist() == [0] * 6


def test_frame_descriptors_are_normalised_means():
    embeds = torch.randn(12, 8)
    frame_ids = torch.arange(3).repeat_interleave(4)
    got = frame_descriptors(embeds, frame_ids)
    expected = F.normalize(embeds.view(3, 4, 8).mean(1), dim=-1)
    torch.testing.assert_close(got, expected)


def _dense_mask(segment_map: torch.Tensor, key_valid: torch.Tensor, within: str) -> torch.Tensor:
    """[b, 1, L, L] boolean SegM mask built the obvious (quadratic) way."""
    b, length = segment_map.shape
    mask = torch.zeros(b, 1, length, length, dtype=torch.bool)
    for i in range(b):
        for q in range(length):
            for k in range(length):
                seg_q, seg_k = int(segment_map[i, q]), int(segment_map[i, k])
                if seg_q < 0 or seg_k < 0:  # text row, or a non-visual key: causal
                    allowed = k <= q
                elif seg_q == seg_k:
                    allowed = k <= q or within == "bidirectional"
                else:
                    allowed = False
                mask[i, 0, q, k] = allowed and bool(key_valid[i, k])
    return mask


@pytest.mark.parametrize("within", ["causal", "bidirectional"])
@pytest.mark.parametrize("group", [1, 2])
def test_blockwise_segm_attention_equals_dense_mask(within, group):
    gen = torch.Generator().manual_seed(7)
    b, heads, length, dim = 2, 4, 30, 8
    query = torch.randn(b, heads, length, dim, generator=gen)
    key = torch.randn(b, heads // group, length, dim, generator=gen)
    value = torch.randn(b, heads // group, length, dim, generator=gen)
    segment_map = torch.full((b, length), -1)
    # sample 0: prefix 4, segments of 6/8/5, a separator inside the video, suffix 6
    segment_map[0, 4:10] = 0
    segment_map[0, 10:18] = 1
    segment_map[0, 19:24] = 2
    # sample 1: left padding 3, prefix 2, two segments (a text token inside the second), suffix
    segment_map[1, 5:15] = 0
    segment_map[1, 15:25] = 1
    segment_map[1, 20] = -1
    key_valid = torch.ones(b, length, dtype=torch.bool)
    key_valid[1, :3] = False
    got = segment_attention(query, key, value, segment_map, key_valid, dim**-0.5, within)
    dense = _dense_mask(segment_map, key_valid, within)
    k_full = key.repeat_interleave(group, dim=1)
    v_full = value.repeat_interleave(group, dim=1)
    expected = F.scaled_dot_product_attention(query, k_full, v_full, attn_mask=dense, scale=dim**-0.5).transpose(1, 2)
    real = key_valid  # padding rows are garbage in both; compare real rows
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    # the vectorised dense mask (eager's SegM path) is the quadratic reference on every real row
    assert torch.equal(segment_mask(segment_map, key_valid, within)[:, 0][real], dense[:, 0][real])


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_record_carries_frame_similarity_and_grid(family):
    """With record_scores, the record holds SegM's frame-to-frame cosines; its cuts are where they fall below tau."""
    import sharp_prune as sp
    from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model

    model = tiny_model(family)
    inputs = tiny_inputs(model, [3, 5], [4, 4], video=TinyVideo(frames=6))
    tau = 0.5
    config = sp.PruneConfig(method="sharp", retention=0.3, record_scores=True, segm_tau=tau, segm_max_segments=8)
    with sp.apply(model, config) as handle:
        model(**inputs)
    record = handle.last
    assert record.grid == (4, 4)
    for row in range(2):
        similarity = record.frame_similarity[row]
        assert similarity.shape == (5,) and not similarity.requires_grad
        frame_segments = torch.zeros(6, dtype=torch.long)
        frame_segments[record.frame_ids[row]] = record.segment_ids[row]
        cut_after = (frame_segments.diff() == 1).nonzero().flatten().tolist()
        assert cut_after == (similarity < tau).nonzero().flatten().tolist()
    with sp.apply(model, config.replace(record_scores=False)) as handle:
        model(**inputs)
    assert handle.last.frame_similarity is None


def test_empty_frames_continue_the_scene_before_them():
    """Frames the pre-LLM stage emptied take the previous frame's descriptor: no cuts around them."""
    gen = torch.Generator().manual_seed(0)
    scene_a, scene_b = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    # frames 0, 1 (scene a), 2 empty, 3 (scene a), 4 empty, 5 (scene b); frame 6 empty at the end
    frame_ids = torch.tensor([0, 0, 1, 1, 3, 3, 5, 5])
    embeds = torch.stack([scene_a] * 6 + [scene_b] * 2) + 0.01 * torch.randn(8, 8, generator=gen)
    descriptors = frame_descriptors(embeds, frame_ids)
    assert torch.equal(descriptors[2], descriptors[1]) and torch.equal(descriptors[4], descriptors[3])
    assert segment_frames(descriptors, tau=0.9, max_segments=8).tolist() == [0, 0, 0, 0, 0, 1]
    # leading empty frames take the first real frame's descriptor
    lead = frame_descriptors(embeds[:4], torch.tensor([2, 2, 3, 3]))
    assert torch.equal(lead[0], lead[2]) and torch.equal(lead[1], lead[2])
