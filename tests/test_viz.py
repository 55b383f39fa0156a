"""`sharp_prune.viz`: the data behind each picture against hand computation on constructed records, the pictures
rendered from real (tiny) models, `sharp-prune viz` / `run --viz`, and the errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sharp_prune as sp
from sharp_prune import viz
from sharp_prune.methods.sharp.posc import calibrate
from sharp_prune.methods.sharp.segm import segment_frames
from sharp_prune.record import PruneRecord
from sharp_prune.testing import TinyVideo, tiny_inputs, tiny_model
from sharp_prune.viz import grid as grid_mod
from sharp_prune.viz import plots as plots_mod

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PREFIX = 5  # text tokens before the video
GAP = 1  # a separator token after each frame (not visual), so positions are not contiguous


def make_record(
    frames: int = 6,
    grid: tuple[int, int] | None = (3, 4),
    keep: list[tuple[int, int, int]] | None = None,
    registers: list[tuple[int, int, int]] | None = None,
    method: str = "sharp",
    raw: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    similarity: np.ndarray | None = None,
    pre_keep: np.ndarray | None = None,
    **config,
) -> PruneRecord:
    """A one-sample record: frame f's token (i, j) sits at PREFIX + f * (h w + GAP) + i w + j.

    `keep` / `registers` are (frame, row, col) cells; per-token arrays are aligned with the scored tokens
    (every visual token, or `pre_keep`: indices into them)."""
    h, w = grid if grid is not None else (3, 4)
    per = h * w
    positions = np.array([PREFIX + f * (per + GAP) + t for f in range(frames) for t in range(per)])
    frame_ids = np.repeat(np.arange(frames), per)
    keep = keep if keep is not None else [(f, 0, 0) for f in range(frames)]
    cells = sorted(set(keep) | set(registers or []))
    keep_positions = np.array([PREFIX + f * (per + GAP) + i * w + j for f, i, j in cells])
    is_register = None
    if registers is not None:
        is_register = torch.tensor([cell in set(registers) for cell in cells])[None].unbind(0)

    def rows(values):
        return None if values is None else [torch.as_tensor(np.asarray(values), dtype=torch.float32)]

    cfg = {"method": method, "retention": 0.25, "record_scores": True, "segm_tau": 0.9, "segm_max_segments": 8}
    cfg.update(config)
    return PruneRecord(
        method=method,
        layer=2,
        seq_len=int(positions[-1]) + 10,
        kept_len=0,
        num_visual=[len(positions)],
        budget=[len(cells)],
        keep_positions=[torch.as_tensor(keep_positions)],
        visual_positions=[torch.as_tensor(positions)],
        frame_ids=[torch.as_tensor(frame_ids)],
        scores=rows(scores),
        raw_scores=rows(raw),
        prior=rows(prior),
        segment_ids=None if segments is None else [torch.as_tensor(np.asarray(segments))],
        frame_similarity=rows(similarity),
        is_register=list(is_register) if is_register is not None else None,
        pre_keep_positions=None if pre_keep is None else [torch.as_tensor(positions[pre_keep])],
        pre_kept=None if pre_keep is None else [len(pre_keep)],
        grid=grid,
        config=cfg,
    )


def assert_png(path) -> None:
    """A real, non-blank PNG."""
    from PIL import Image

    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 200 and image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something was drawn


# ------------------------------------------------------------------------------------ picture 2: the overlay


def test_keep_mask_marks_exactly_the_kept_cells_and_registers_are_a_subset():
    rng = np.random.default_rng(0)
    frames, (h, w) = 7, (3, 5)
    every = [(f, i, j) for f in range(frames) for i in range(h) for j in range(w)]
    chosen = [every[k] for k in rng.choice(len(every), 30, replace=False)]
    registers, keep = chosen[:4], chosen[4:]
    record = make_record(frames, (h, w), keep=keep, registers=registers)

    mask, reg = viz.keep_mask(record), viz.register_mask(record)
    assert mask.shape == reg.shape == (frames, h, w) and mask.dtype == bool
    expected = np.zeros((frames, h, w), bool)
    for f, i, j in chosen:
        expected[f, i, j] = True
    expected_reg = np.zeros_like(expected)
    for f, i, j in registers:
        expected_reg[f, i, j] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(reg, expected_reg)
    assert not (reg & ~mask).any() and mask.sum() == record.budget[0]

    panels = viz.overlay_panels(record, None, max_frames=3)
    assert [p.frame for p in panels] == [0, 3, 6]  # evenly spaced, first and last
    for panel in panels:
        assert panel.kept == expected[panel.frame].sum() and panel.num_registers == expected_reg[panel.frame].sum()
        assert f"kept {panel.kept}/{h * w}" in panel.label


def test_overlay_image_brightens_kept_cells_dims_the_rest_and_tints_registers():
    rng = np.random.default_rng(1)
    frame = rng.integers(40, 256, (50, 70, 3), dtype=np.uint8)  # 50 x 70 pixels over a 4 x 6 grid: uneven cells
    keep = np.zeros((4, 6), bool)
    keep[1, 2] = keep[3, 5] = keep[0, 0] = True
    registers = np.zeros_like(keep)
    registers[0, 0] = True
    image = viz.overlay_image(frame, keep, registers)
    assert image.shape == frame.shape and image.dtype == np.uint8
    for y in range(50):
        for x in range(70):
            cell = (y * 4 // 50, x * 6 // 70)
            if registers[cell]:
                assert not np.array_equal(image[y, x], frame[y, x])
            elif keep[cell]:
                np.testing.assert_array_equal(image[y, x], frame[y, x])
            else:
                np.testing.assert_array_equal(image[y, x], np.round(frame[y, x] * grid_mod.DIM).astype(np.uint8))
    pixels = grid_mod.upsample(np.ones((4, 6), bool), 50, 70)
    assert pixels.shape == (50, 70) and pixels.all()


def test_mask_outline_traces_the_border_of_the_kept_region():
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    assert sorted(grid_mod.mask_outline(one)) == sorted(
        [((1, 1), (2, 1)), ((1, 2), (2, 2)), ((1, 1), (1, 2)), ((2, 1), (2, 2))]
    )
    pair = one.copy()
    pair[1, 2] = True  # the shared side disappears
    assert len(grid_mod.mask_outline(pair)) == 6
    full = np.ones((3, 4), bool)
    assert len(grid_mod.mask_outline(full)) == 2 * (3 + 4)  # only the perimeter
    assert grid_mod.mask_outline(np.zeros((2, 2), bool)) == []


def test_record_frames_map_evenly_onto_decoded_frames():
    assert viz.decoded_frame_spans(16, 32) == [(2 * f, 2 * f + 2) for f in range(16)]  # Qwen-VL temporal patches
    assert viz.decoded_frame_spans(6, 6) == [(f, f + 1) for f in range(6)]
    for record_frames, decoded in [(5, 3), (3, 5), (7, 20), (1, 4), (4, 1)]:
        spans = viz.decoded_frame_spans(record_frames, decoded)
        starts = [a for a, _ in spans]
        assert len(spans) == record_frames and starts == sorted(starts)
        assert all(0 <= a < b <= max(decoded, a + 1) and a < decoded for a, b in spans)
    # A Qwen-style record (3 frames) over 6 decoded frames: panel f shows decoded frame 2f and says so.
    frames = np.stack([np.full((12, 16, 3), 10 * (k + 1), np.uint8) for k in range(6)])
    record = make_record(3, (3, 4), keep=[(f, f, f) for f in range(3)])
    panels = viz.overlay_panels(record, frames)
    assert [p.decoded for p in panels] == [0, 2, 4]
    assert "(clip 2-3)" in panels[1].label
    kept_pixel = panels[1].image[4 * 1 + 1, 4 * 1 + 1]  # inside cell (1, 1) of frame 1
    np.testing.assert_array_equal(kept_pixel, frames[2, 0, 0])
    assert viz.panel_frames(40, 16).tolist()[::15] == [0, 39] and len(viz.panel_frames(40, 16)) == 16


def test_as_frames_accepts_common_layouts_and_refuses_the_rest():
    rgb = np.random.default_rng(2).integers(0, 256, (2, 8, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(viz.as_frames(list(rgb)), rgb)
    np.testing.assert_array_equal(viz.as_frames(torch.from_numpy(rgb).permute(0, 3, 1, 2)), rgb)  # channel-first
    np.testing.assert_array_equal(viz.as_frames(rgb / 255.0), rgb)  # floats in [0, 1]
    assert viz.as_frames(rgb[..., 0]).shape == (2, 8, 10, 3)  # grey
    for bad in (np.zeros((2, 8)), np.zeros((0, 8, 10, 3)), np.zeros((2, 8, 10, 5)), [np.zeros((4, 4, 3)), np.zeros(3)]):
        with pytest.raises(sp.InputError, match="frames must"):
            viz.as_frames(bad)


# -------------------------------------------------------------------------------- picture 1: scores per frame


def _ramp_record(mode: str = "subtract", lam: float = 1.0) -> tuple[PruneRecord, dict]:
    """Raw attention = 0.010 + 0.002 f + a within-frame pattern; prior = 0.004 + 0.002 f (the same ramp)."""
    frames, (h, w) = 8, (2, 3)
    rng = np.random.default_rng(3)
    pattern = rng.uniform(0, 0.001, (frames, h * w))
    f = np.repeat(np.arange(frames), h * w)
    raw = 0.010 + 0.002 * f + pattern.ravel()
    prior = 0.004 + 0.002 * f + rng.uniform(0, 1e-4, f.shape)
    scores = calibrate(torch.tensor(raw), torch.tensor(prior), mode, lam).numpy()
    record = make_record(frames, (h, w), raw=raw, prior=prior, scores=scores, posc_mode=mode, posc_lambda=lam)
    return record, {"raw": raw, "prior": prior, "scores": scores, "frames": frames, "per": h * w}


def _manual_means(values: np.ndarray, frames: int, per: int) -> list[float]:
    out = []
    for frame in range(frames):
        total = 0.0
        for token in range(per):
            total += values[frame * per + token]
        out.append(total / per)
    return out


@pytest.mark.parametrize("mode", ["subtract", "divide"])
def test_frame_scores_are_per_frame_means_and_recover_a_planted_ramp(mode):
    record, data = _ramp_record(mode)
    scores = viz.frame_scores(record)
    assert scores.has_posc and scores.posc_mode == mode
    for name, field in (("raw", "raw"), ("prior", "prior"), ("scores", "calibrated")):
        np.testing.assert_allclose(getattr(scores, field), _manual_means(data[name], data["frames"], data["per"]))
    assert scores.tokens.tolist() == [data["per"]] * data["frames"]
    # The planted positional ramp: 0.002 per frame, almost all of the variance.
    assert scores.raw_trend.slope == pytest.approx(0.002, rel=0.05) and scores.raw_trend.r2 > 0.99
    assert scores.prior_trend.slope == pytest.approx(0.002, rel=0.05)
    if mode == "subtract":  # calibration removes it
        assert abs(scores.calibrated_trend.slope) < 0.1 * 0.002


def test_linear_trend_matches_the_closed_form_and_skips_missing_frames():
    rng = np.random.default_rng(4)
    y = 3.0 - 0.5 * np.arange(12) + rng.normal(0, 0.8, 12)
    x = np.arange(12.0)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    r2 = np.corrcoef(x, y)[0, 1] ** 2
    trend = viz.linear_trend(y)
    assert trend.slope == pytest.approx(slope) and trend.intercept == pytest.approx(intercept)
    assert trend.r2 == pytest.approx(r2)
    np.testing.assert_allclose(trend.fitted, intercept + slope * x)
    gappy = y.copy()
    gappy[[2, 7]] = np.nan
    keep = np.isfinite(gappy)
    expected = viz.linear_trend(y[keep], x[keep])
    assert viz.linear_trend(gappy).slope == pytest.approx(expected.slope)
    assert viz.linear_trend(np.full(5, 2.0)).slope == 0 and viz.linear_trend(np.array([1.0])).r2 == 0


def test_scores_without_posc_draw_one_panel_titled_no_posc(tmp_path, monkeypatch):
    raw = np.linspace(0, 1, 6 * 12)
    record = make_record(6, method="fastv", raw=raw, scores=raw)
    scores = viz.frame_scores(record)
    assert not scores.has_posc and scores.calibrated is None and scores.prior is None
    np.testing.assert_allclose(scores.raw, _manual_means(raw, 6, 12))
    figures = []
    monkeypatch.setattr(plots_mod, "save", lambda figure, path: figures.append(figure) or path)
    viz.plot_frame_scores(scores, tmp_path / "s.png")
    (ax,) = figures[0].axes
    assert "no PosC" in ax.get_title()


# --------------------------------------------------------------------------------- picture 3: the timeline


def test_segment_timeline_cuts_where_segments_change_and_counts_kept_tokens():
    frames, per = 8, 12
    frame_segments = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    similarity = np.array([0.95, 0.5, 0.97, 0.93, 0.4, 0.3, 0.99])
    rng = np.random.default_rng(5)
    every = [(f, i, j) for f in range(frames) for i in range(3) for j in range(4)]
    chosen = [every[k] for k in rng.choice(len(every), 25, replace=False)]
    record = make_record(
        frames,
        keep=chosen[3:],
        registers=chosen[:3],
        segments=np.repeat(frame_segments, per),
        similarity=similarity,
        segm_tau=0.9,
    )
    timeline = viz.segment_timeline(record)
    assert timeline.cuts.tolist() == [f for f in range(frames - 1) if frame_segments[f + 1] != frame_segments[f]]
    assert timeline.below_tau.tolist() == [f for f, s in enumerate(similarity) if s < 0.9]
    assert timeline.num_segments == 4 and timeline.tau == 0.9
    np.testing.assert_array_equal(timeline.segment_of_frame, frame_segments)
    np.testing.assert_allclose(timeline.similarity, similarity, rtol=1e-6)
    assert timeline.kept.tolist() == [sum(c[0] == f for c in chosen) for f in range(frames)]
    assert timeline.registers.tolist() == [sum(c[0] == f for c in chosen[:3]) for f in range(frames)]
    assert timeline.tokens.tolist() == [per] * frames and timeline.kept.sum() == record.budget[0]


def test_frames_emptied_by_the_pre_stage_get_segments_from_segms_rule():
    rng = np.random.default_rng(6)
    for trial in range(20):
        descriptors = torch.nn.functional.normalize(torch.randn(10, 4) + 2 * (trial % 3), dim=-1)
        similarity = (descriptors[:-1] * descriptors[1:]).sum(-1)
        tau, cap = float(rng.uniform(0.2, 0.95)), int(rng.integers(2, 9))
        expected = segment_frames(descriptors, tau, cap).numpy()
        np.testing.assert_array_equal(viz.data.segments_from_similarity(similarity.numpy(), tau, cap), expected)
    # Frames 2 and 5 emptied by the pre-LLM stage: their segment comes from the rule, not from a token.
    frames, per = 7, 12
    similarity = np.array([0.95, 0.1, 0.2, 0.96, 0.3, 0.95])
    segments = viz.data.segments_from_similarity(similarity, 0.9, 8)
    pre_keep = np.flatnonzero(~np.isin(np.repeat(np.arange(frames), per), [2, 5]))
    record = make_record(frames, segments=np.repeat(segments, per)[pre_keep], similarity=similarity, pre_keep=pre_keep)
    timeline = viz.segment_timeline(record)
    np.testing.assert_array_equal(timeline.segment_of_frame, segments)
    assert timeline.cuts.tolist() == [1, 2, 4] and timeline.scored.tolist() == [12, 12, 0, 12, 12, 0, 12]


# --------------------------------------------------------------------------- picture 4: accuracy vs retention


def test_accuracy_curves_group_the_bench_summary_and_bench_shares_the_plot(tmp_path):
    from sharp_prune.bench import report

    assert report.plot_accuracy is viz.plot_accuracy  # one implementation, shared with `sharp-prune bench`
    summary = [
        {"layer": k, "method": m, "retention": r, "accuracy": (k + r) / 10 + (m == "sharp") / 10}
        for k in (4, 2)
        for m in ("sharp", "fastv")
        for r in (0.3, 0.1, 0.2)
    ]
    curves = viz.accuracy_curves(summary)
    assert list(curves) == [2, 4]
    for k in (2, 4):
        for m in ("sharp", "fastv"):
            assert curves[k][m] == [(r, (k + r) / 10 + (m == "sharp") / 10) for r in (0.1, 0.2, 0.3)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"summary": summary, "baseline": {"accuracy": 0.7}, "num_visual": 64}))
    assert_png(viz.write_bench(path, tmp_path / "out"))
    with pytest.raises(sp.InputError, match="lacks accuracy"):
        viz.accuracy_curves([{"layer": 2, "method": "x", "retention": 0.1}])
    with pytest.raises(sp.InputError, match="not found"):
        viz.load_bench(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(sp.InputError, match="not JSON"):
        viz.load_bench(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"trials": []}))
    with pytest.raises(sp.InputError, match="no 'summary' rows"):
        viz.load_bench(tmp_path / "other.json")


# ------------------------------------------------------------------------------------------- bad input


def test_bad_input_raises_before_anything_is_drawn(tmp_path):
    out = tmp_path / "out"
    raw = np.zeros(6 * 12)
    no_scores = make_record(6, method="fastv", record_scores=False)
    with pytest.raises(sp.InputError, match=r"record_scores=True"):
        viz.write_all(no_scores, None, out)
    with pytest.raises(sp.InputError, match=r"record_scores=True"):
        viz.frame_scores(no_scores)
    record = make_record(6, method="fastv", raw=raw, scores=raw)
    with pytest.raises(sp.InputError, match="out of range"):
        viz.write_all(record, None, out, sample=1)
    with pytest.raises(sp.InputError, match="PruneRecord"):
        viz.write_all({"keep_positions": []}, None, out)
    with pytest.raises(sp.InputError, match="frames must"):
        viz.write_all(record, np.zeros((3, 4)), out)
    with pytest.raises(sp.InputError, match=">= 1"):
        viz.write_all(record, None, out, max_frames=0)
    with pytest.raises(sp.InputError, match="scores for"):
        viz.frame_scores(make_record(6, method="fastv", raw=raw[:-1], scores=raw[:-1]))
    assert not out.exists()  # nothing written by any of the above
    wrong_grid = make_record(6, grid=(3, 4))
    wrong_grid.grid = (2, 2)
    with pytest.raises(sp.InputError, match=r"frame 0 has 12 visual tokens, not the grid's 2 x 2"):
        viz.keep_mask(wrong_grid)


def test_unscored_methods_and_gridless_records_skip_their_picture(tmp_path, caplog):
    uniform = make_record(6, method="uniform")
    with caplog.at_level("INFO", logger="sharp_prune.viz"):
        written = viz.write_all(uniform, None, tmp_path / "uniform")
    assert set(written) == {"overlay", "timeline"} and "scores no tokens" in caplog.text
    with pytest.raises(sp.InputError, match="scores no tokens"):
        viz.frame_scores(uniform)
    raw = np.arange(6 * 12, dtype=float)
    generic = make_record(6, grid=None, method="fastv", raw=raw, scores=raw)
    with pytest.raises(sp.InputError, match="raster layout"):
        viz.keep_mask(generic)
    written = viz.write_all(generic, None, tmp_path / "generic")
    assert set(written) == {"scores", "timeline"}
    for path in written.values():
        assert_png(path)


def test_missing_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    raw = np.zeros(6 * 12)
    with pytest.raises(ImportError, match=r"pip install 'sharp-prune\[viz\]'"):
        viz.write_all(make_record(6, method="fastv", raw=raw, scores=raw), None, tmp_path)
    assert viz.keep_mask(make_record(6)).sum() == 6  # the data functions need no matplotlib


# ------------------------------------------------------------------------------------ real models, PNGs


def test_pictures_of_a_real_tiny_qwen_prefill(tmp_path):
    model = tiny_model("qwen2_vl")
    inputs = tiny_inputs(model, [5], [6], video=TinyVideo(frames=4, grid=4))
    config = sp.PruneConfig(method="sharp", retention=0.3, layer=2, record_scores=True, segm_tau=0.5, regd_delta=0.99)
    with sp.apply(model, config) as handle, torch.no_grad():
        model(**inputs)
        record = handle.last
    mask = viz.keep_mask(record)
    assert mask.shape == (4, 4, 4) and mask.sum() == record.budget[0]
    registers = record.is_register[0] if record.is_register is not None else torch.zeros(0, dtype=torch.bool)
    assert viz.register_mask(record).sum() == int(registers.sum())
    timeline = viz.segment_timeline(record)
    assert timeline.kept.sum() == record.budget[0] and timeline.similarity.shape == (3,)
    # Qwen-VL: each record frame is a temporal patch of 2 video frames; hand it the 8 "decoded" frames.
    frames = np.random.default_rng(7).integers(0, 256, (8, 24, 32, 3), dtype=np.uint8)
    written = viz.write_all(record, frames, tmp_path)
    assert set(written) == {"scores", "overlay", "timeline"}
    for name, path in written.items():
        assert path == tmp_path / viz.FILES[name]
        assert_png(path)


def test_run_and_cli_write_the_pictures(tmp_path, capsys):
    pytest.importorskip("av")
    from sharp_prune.cli import main
    from sharp_prune.run import run
    from sharp_prune.testing import synthetic_video, tiny_llava_onevision_checkpoint

    checkpoint = tiny_llava_onevision_checkpoint(tmp_path / "ckpt")
    clip = synthetic_video(tmp_path / "clip.mp4", num_frames=12)
    result = run(
        checkpoint,
        clip,
        "What moves?",
        config=sp.PruneConfig(method="sharp", retention=0.25, layer=2),
        num_frames=6,
        max_new_tokens=2,
        prefill_repeats=1,
        device="cpu",
        viz_dir=tmp_path / "run",
        viz_frames=4,
    )
    assert set(result.viz) == {"scores", "overlay", "timeline"}
    for name, path in result.viz.items():
        assert path == str(tmp_path / "run" / viz.FILES[name])
        assert_png(Path(path))
    assert result.record is not None and result.clip.frames.shape[0] == 6
    assert viz.keep_mask(result.record).sum() == result.kept_tokens
    data = json.loads(json.dumps(result.to_dict()))  # record and frames stay out of the JSON
    assert "record" not in data and "clip" not in data and data["viz"] == result.viz
    assert data["config"]["record_scores"] is True

    argv = ["viz", "--video", str(clip), "--model", str(checkpoint), "--question", "What moves?", "--method"]
    argv += ["uniform", "--frames", "4", "--max-new-tokens", "1", "--device", "cpu", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "uniform kept" in out and "no scores.png: method 'uniform' scores no tokens" in out
    for name in ("overlay", "timeline"):
        assert f"wrote {tmp_path / 'cli' / viz.FILES[name]}" in out
        assert_png(tmp_path / "cli" / viz.FILES[name])
    assert not (tmp_path / "cli" / "scores.png").exists()
    assert main(["viz", "--video", str(clip), "--out", str(tmp_path / "x")]) == 2
    assert "--video needs --model and --question" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["viz", "--video", str(clip), "--bench", "b.json"])
