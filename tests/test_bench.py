"""The captioned-video task generator and `sharp-prune bench` on a tiny configuration."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import sharp_prune as sp
from sharp_prune.bench.report import plot_accuracy
from sharp_prune.bench.runner import BenchOptions, run_bench, smallest_layer
from sharp_prune.bench.task import (
    ALL_QUESTION_TYPES,
    VARIANTS,
    TaskConfig,
    candidate_log_probs,
    frame_scenes,
    make_item,
    make_items,
)
from sharp_prune.cli.bench import add_bench_parser, options_from_args

SMALL = TaskConfig(frames=8, tokens_per_frame=24, scenes=4)


def test_items_are_deterministic_and_splits_disjoint(smollm2):
    _, tokenizer = smollm2
    a, b = make_items(tokenizer, 3, "test", SMALL), make_items(tokenizer, 3, "test", SMALL)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.input_ids, y.input_ids) and x.candidates == y.candidates
    validation = make_items(tokenizer, 3, "validation", SMALL)
    assert not any(torch.equal(x.input_ids, y.input_ids) for x in a for y in validation)


@pytest.mark.parametrize("seed", range(8))
def test_item_answer_is_correct_and_in_the_needle_scene(smollm2, seed):
    _, tokenizer = smollm2
    item = make_item(tokenizer, seed, replace(SMALL, question_types=ALL_QUESTION_TYPES))
    needle = item.scenes[item.needle_scene]
    answer = item.candidates[item.answer]
    assert answer == getattr(needle, "object" if item.question_type == "after" else item.question_type)
    assert len(set(item.candidates)) == SMALL.choices
    assert item.num_visual == SMALL.frames * SMALL.tokens_per_frame
    # every frame has exactly tokens_per_frame tokens, in order
    counts = torch.bincount(item.frame_map[0][item.frame_map[0] >= 0])
    assert counts.tolist() == [SMALL.tokens_per_frame] * SMALL.frames
    # the answer word occurs verbatim in the needle scene, and the question names the other attributes
    text = tokenizer.decode(item.input_ids[0, item.needle_positions])
    assert f" {answer}" in text
    assert item.answer_positions.numel() > 0
    if item.question_type == "after":  # the question names the scene before the needle
        previous = item.scenes[item.needle_scene - 1]
        assert item.needle_scene >= 1 and f"{previous.colour} {previous.object}" in item.question
    else:
        others = {"colour", "object", "place"} - {item.question_type}
        assert all(getattr(needle, o) in item.question for o in others)
    # every attribute is unique in the video, so the named attributes identify the needle scene
    for attribute in ("colour", "object", "place"):
        assert len({getattr(s, attribute) for s in item.scenes}) == len(item.scenes)


def test_unpruned_model_solves_a_fixed_subset(smollm2):
    model, tokenizer = smollm2
    items = make_items(tokenizer, 6, "test", SMALL)
    correct = 0
    for item in items:
        correct += int(candidate_log_probs(model, item).argmax()) == item.answer
    assert correct >= 5


def test_bench_runs_and_writes_json_and_png(smollm2, tmp_path):
    model, tokenizer = smollm2
    options = BenchOptions(
        items=2, methods=("fastv", "sharp"), retentions=(0.25, 0.5), layers=(2, 4), ablation=True, task=SMALL
    )
    result = run_bench(model, tokenizer, options)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    loaded = json.loads(path.read_text())
    methods = {row["method"] for row in loaded["summary"]}
    assert methods == {"fastv", "sharp", "sharp-segm", "sharp-posc", "sharp-regd"}
    assert len(loaded["summary"]) == 5 * 2 * 2
    assert len(loaded["trials"]) == 2 * 5 * 2 * 2
    for row in loaded["summary"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["needle_recall"] <= 1 and row["kl"] >= -1e-6
        assert row["kept"] == round(row["retention"] * SMALL.frames * SMALL.tokens_per_frame)
        assert row["time_ratio_median"] > 0
    assert loaded["options"]["method_configs"]["sharp-posc"]["posc"] is False
    assert "sharp@K=2" in loaded["score_profiles"]
    assert set(smallest_layer(loaded["summary"], retention=0.25)) == methods
    png = plot_accuracy(loaded["summary"], loaded["baseline"]["accuracy"], tmp_path / "bench.png")
    assert png.stat().st_size > 10_000


def test_bench_options_are_validated_before_loading():
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    with pytest.raises(SystemExit) as refused:  # argparse: exit status 2 and its usage line
        parser.parse_args(["bench", "--retentions", "0,0.2"])
    assert refused.value.code == 2
    for bad in (
        ["--scenes", "0"],
        ["--threads", "-1"],
        ["--frames", "0"],
        ["--tokens-per-frame", "0"],
        ["--layers", "0"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", *bad])
    with pytest.raises(sp.ConfigError, match=r"K=99 is outside \[1, 29\] for SmolLM2"):  # from its config, no weights
        options_from_args(parser.parse_args(["bench", "--layers", "2,99"]))
    with pytest.raises(ValueError, match="choose one of"):
        options_from_args(parser.parse_args(["bench", "--methods", "fastv,nope"]))
    with pytest.raises(ValueError, match="question-types"):
        options_from_args(parser.parse_args(["bench", "--question-types", "colour,when"]))
    with pytest.raises(ValueError, match="do not split into 4 equal scenes"):
        options_from_args(parser.parse_args(["bench", "--frames", "10", "--scenes", "4"]))
    with pytest.raises(ValueError, match="leaves no frame"):
        options_from_args(parser.parse_args(["bench", "--task", "needle", "--frames", "7"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--task", "nope"])
    (options,) = options_from_args(parser.parse_args(["bench", "--layers", "2,4", "--ablation", "--items", "3"]))
    assert options.layers == (2, 4) and "sharp-regd" in options.method_list()
    assert options.task == VARIANTS["redundant"] and options.task_variant == "redundant"
    runs = options_from_args(parser.parse_args(["bench", "--task", "all", "--scenes", "8"]))
    assert [r.task.scenes for r in runs] == [8] * len(VARIANTS)
    assert [r.task_variant.split()[0] for r in runs] == list(VARIANTS) and "modified: scenes" in runs[0].task_variant


def test_bench_on_gemma3_defaults_to_its_first_scoring_layer_and_refuses_sliding_only_k():
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    (options,) = options_from_args(parser.parse_args(["bench", "--model", "gemma3-270m"]))
    assert options.model == "gemma3-270m" and options.layers == (6,)
    with pytest.raises(sp.ConfigError, match=r"K >= 6 \(full-attention layers: \[5, 11, 17\]\)"):
        options_from_args(parser.parse_args(["bench", "--model", "gemma3-270m", "--layers", "2"]))
    (options,) = options_from_args(
        parser.parse_args(["bench", "--model", "gemma3-270m", "--layers", "2", "--methods", "random,uniform"])
    )
    assert options.layers == (2,)


@pytest.mark.parametrize("needle", range(8))
@pytest.mark.parametrize("frames", [9, 16, 64])
def test_a_needle_of_k_frames_is_one_run_and_every_other_scene_has_frames(needle, frames):
    for k in (1, 2):
        config = replace(VARIANTS["needle"], frames=frames, needle_frames=k)
        scenes = frame_scenes(config, needle)
        assert len(scenes) == frames and scenes == sorted(scenes)  # contiguous runs, in scene order
        counts = [scenes.count(s) for s in range(config.scenes)]
        assert counts[needle] == k and all(c >= 1 for c in counts)
        others = [c for s, c in enumerate(counts) if s != needle]
        assert max(others) - min(others) <= 1  # the rest shared evenly


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_states_the_answer_only_in_the_needle_scene(smollm2, variant):
    _, tokenizer = smollm2
    config = replace(VARIANTS[variant], tokens_per_frame=48)  # room for the whole caption in every frame
    for item in make_items(tokenizer, 4, "validation", config):
        assert len(item.candidates) == config.choices
        needle_frames = item.frame_map[0][item.needle_positions].unique().numel()
        assert needle_frames == (config.needle_frames or config.frames // config.scenes)
        answer = item.candidates[item.answer]
        assert f" {answer}" in tokenizer.decode(item.input_ids[0, item.needle_positions])
        outside = torch.ones(item.input_ids.shape[1], dtype=torch.bool)
        outside[item.needle_positions] = False
        outside &= item.frame_map[0] >= 0
        assert f" {answer} " not in tokenizer.decode(item.input_ids[0, outside])  # no other scene states it


def test_bootstrap_intervals_cover_the_mean_and_are_reproducible():
    from sharp_prune.bench.intervals import bootstrap_interval, paired_difference

    outcomes = [1.0] * 12 + [0.0] * 4
    low, high = bootstrap_interval(outcomes)
    assert low < 0.75 < high and (low, high) == bootstrap_interval(outcomes)
    assert low > 0.45 and high <= 1.0  # 16 items: about +-0.2
    assert bootstrap_interval([1.0] * 8) == (1.0, 1.0)
    wide, narrow = bootstrap_interval(outcomes[::4]), bootstrap_interval(outcomes * 4)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # more items, a narrower interval
    same = paired_difference(outcomes, outcomes)
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}
    better = paired_difference([1.0] * 16, outcomes)
    assert better["mean"] == 0.25 and 0.0 < better["low"] <= 0.25 <= better["high"]
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0], [1.0, 0.0])


def test_the_table_fits_80_columns_without_cutting_a_name():
    from rich.console import Console

    from sharp_prune.bench.report import print_table
    from sharp_prune.bench.runner import Trial, compare, summarise

    methods = ("divprune", "feather", "random", "sharp", "sharp-cached", "sharp-posc", "fastv", "uniform")
    trials = [
        Trial(i, "colour", 2, m, r, bool((i + j) % 3), bool(i % 2), 0.123, 0.5, True, 0.31, 205)
        for i in range(16)
        for j, m in enumerate(methods)
        for r in (0.1, 0.2, 0.3)
    ]
    baseline = [bool(i % 4) for i in range(16)]
    result = {
        "options": {"items": 16, "split": "test"},
        "task_variant": "many-scenes",
        "num_visual": 2048,
        "seq_len": 2130,
        "baseline": {"accuracy": 0.75, "prefill_s_median": 0.9, "by_type": {"colour": 0.75}},
        "summary": summarise(trials, baseline),
        "comparisons": compare(trials),
    }
    console = Console(width=80, record=True, color_system=None)
    print_table(result, console)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in text
    for method in methods:
        assert any(line.split()[:1] == [method] for line in lines), method
    for header in ("acc", "d unpr", "agree", "KL", "needle", "time"):
        assert header in text
    assert "sharp - fastv at r=0.20" in text and "task many-scenes" in text
