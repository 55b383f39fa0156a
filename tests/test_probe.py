"""The layer probe (`sharp-prune probe`): its scores are the engine's, its rank, its command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sharp_prune as sp
from sharp_prune import hf_protocol as hf
from sharp_prune.bench.probe import (
    VARIANTS,
    ProbeItem,
    item_from_prompt,
    parse_layers,
    read_prompts,
    relevant_rank,
    run_probe,
    summarise,
    token_scores,
)
from sharp_prune.cli import main
from sharp_prune.cli import probe as probe_cli
from sharp_prune.engine import attention
from sharp_prune.errors import AlreadyAppliedError, ConfigError
from sharp_prune.testing import tiny_causal_lm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_item(seq_len: int = 60, seed: int = 0) -> ProbeItem:
    ids = torch.randint(3, 200, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    frame_map = sp.frame_map_for_span(seq_len, start=5, num_frames=6, tokens_per_frame=7)
    return ProbeItem(ids, frame_map, (2,), f"seed {seed}")


# (method, its config's extra fields, probe variant, record field): what the engine selects on at K
ENGINE = (
    ("fastv", {}, "last", "raw_scores"),
    ("feather", {}, "last-norope", "raw_scores"),
    ("sharp", {"segm": False, "regd": False}, "text", "raw_scores"),
    ("sharp", {"segm": False, "regd": False}, "text+posc", "scores"),
    ("sharp", {"segm": False, "regd": False, "sharp_query": "last"}, "last+posc", "scores"),
)


def test_probe_scores_are_what_the_engine_selects_on():
    model = tiny_causal_lm(num_layers=4)
    item = _tiny_item()
    scores = token_scores(model, item, [1, 2, 3])
    for k in (1, 2, 3):
        for method, extra, variant, field in ENGINE:
            config = sp.PruneConfig(method=method, retention=0.5, layer=k, record_scores=True, **extra)
            with sp.apply(model, config) as handle, handle.visual_frames(item.frame_map), torch.no_grad():
                model(input_ids=item.input_ids)
            recorded = getattr(handle.last, field)[0]
            torch.testing.assert_close(scores[variant][k], recorded, rtol=1e-5, atol=1e-7, msg=f"{variant} K={k}")
    # the variants differ from each other (they are not one score under five names)
    assert not torch.allclose(scores["last"][2], scores["text"][2])
    assert not torch.allclose(scores["last"][2], scores["last-norope"][2])


def test_rank_of_the_relevant_frames():
    assert relevant_rank([0.9, 0.1, 0.2, 0.3], [0]) == 0.0  # on top
    assert relevant_rank([0.0, 0.1, 0.2, 0.3], [0]) == 1.0  # at the bottom
    assert relevant_rank([0.1, 0.3, 0.2, 0.0], [2]) == pytest.approx(1 / 3)  # second of four: rank index 1 / (F - 1)
    assert relevant_rank([0.5] * 6, [1, 4]) == 0.5  # all tied: no signal
    # several relevant frames on top (or at the bottom) reach exactly 0 (or 1)
    assert relevant_rank([0.8, 0.9, 0.1, 0.2, 0.3], [0, 1]) == 0.0
    assert relevant_rank([0.8, 0.9, 0.1, 0.2, 0.3], [2, 3]) == 1.0
    generator = torch.Generator().manual_seed(0)
    random_ranks = [relevant_rank(torch.rand(40, generator=generator), [3, 17]) for _ in range(400)]
    assert sum(random_ranks) / len(random_ranks) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError):
        relevant_rank([0.1, 0.2], [0, 1])


def test_summary_interval_and_smallest_layer_beating_random():
    layers = [1, 2, 3]
    # last: random at K=1, on top from K=2; text: always random
    ranks = {"last": [[0.5 + 0.1 * (-1) ** i, 0.1, 0.0] for i in range(8)], "text": [[0.5, 0.5, 0.5]] * 8}
    summary = summarise(ranks, layers, {1: "full", 2: "sliding", 3: "full"})
    first = summary["layers"][0]["variants"]["last"]
    assert first["low"] < 0.5 < first["high"] and not first["beats_random"]
    assert summary["layers"][1]["variants"]["last"]["beats_random"]
    assert summary["layers"][1]["attention"] == "sliding"
    assert summary["smallest_layer"] == {"last": 3, "text": None}  # K=2 is a sliding layer: not usable
    assert summary["smallest_layer_any"] == {"last": 2, "text": None}


def test_layer_lists():
    assert parse_layers("1-3,7") == (1, 2, 3, 7)
    assert parse_layers("4,2,2") == (2, 4)
    for bad in ("a", "3-1", ",", "1-x"):
        with pytest.raises(ValueError):
            parse_layers(bad)


def test_probe_restores_the_attention_implementation_even_after_an_error():
    model = tiny_causal_lm(num_layers=4)
    item = _tiny_item()
    hooks = sum(len(layer._forward_pre_hooks) for layer in model.model.layers)
    run_probe(model, [item], [1, 3])
    assert hf.attention_implementation(model.config) == "sdpa"

    def fail(module, args):
        raise RuntimeError("boom")

    failing = model.model.layers[1].mlp.register_forward_pre_hook(fail)  # an error inside the recorded forward
    with pytest.raises(RuntimeError, match="boom"):
        token_scores(model, item, [3])
    failing.remove()
    assert hf.attention_implementation(model.config) == "sdpa"
    assert sum(len(layer._forward_pre_hooks) for layer in model.model.layers) == hooks
    assert not any(layer.self_attn in attention._OBSERVERS for layer in model.model.layers)
    # the model still prunes and still probes the same way
    with sp.apply(model, method="fastv", retention=0.5, layer=2) as handle, handle.visual_frames(item.frame_map):
        with torch.no_grad():
            model(input_ids=item.input_ids)
        with pytest.raises(AlreadyAppliedError):
            token_scores(model, item, [2])
    assert handle.last.budget == [21]
    assert hf.attention_implementation(model.config) == "sdpa"


def _write(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_prompts_file_is_read_and_tokenised_like_the_task(tmp_path, smollm2):
    _, tokenizer = smollm2
    good = {"frames": ["a red car", "a dog in the park", "a boat"], "question": "Where is the dog?", "relevant": [1]}
    prompts = read_prompts(_write(tmp_path / "p.jsonl", good, "", {**good, "relevant": [0, 2]}))
    assert [p.relevant for p in prompts] == [(1,), (0, 2)] and prompts[1].line == 3
    item = item_from_prompt(tokenizer, prompts[0])
    assert item.num_frames == 3 and item.relevant == (1,)
    assert item.input_ids.shape == item.frame_map.shape
    text = tokenizer.decode(item.input_ids[0, item.frame_map[0] == 1])
    assert text.strip() == "a dog in the park"
    assert int(item.frame_map[0, -1]) == -1  # the question follows the frames


@pytest.mark.parametrize(
    "lines, match",
    [
        (["not json"], "line 1: not JSON"),
        ([{"frames": ["a", "b"], "question": "q"}], "missing \\['relevant'\\]"),
        ([{"frames": ["a", "b"], "question": "q", "relevant": [0], "answer": 1}], "unknown \\['answer'\\]"),
        ([{"frames": ["a"], "question": "q", "relevant": [0]}], "at least 2"),
        ([{"frames": ["a", "b"], "question": "", "relevant": [0]}], "'question'"),
        ([{"frames": ["a", "b"], "question": "q", "relevant": []}], "'relevant'"),
        (
            [
                {"frames": ["a", "b"], "question": "q", "relevant": [0]},
                {"frames": ["a", "b"], "question": "q", "relevant": [2]},
            ],
            "line 2: relevant frame\\(s\\) \\[2\\] are outside \\[0, 1\\]",
        ),
        ([{"frames": ["a", "b"], "question": "q", "relevant": [0, 1]}], "every frame is relevant"),
        ([""], "holds no prompt"),
    ],
)
def test_bad_prompts_are_refused_with_the_line(tmp_path, lines, match):
    with pytest.raises(ConfigError, match=match):
        read_prompts(_write(tmp_path / "p.jsonl", *lines))


def _no_weights(*args, **kwargs):
    raise AssertionError("the weights were loaded before the arguments were checked")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--layers", "1,30"], "--layers 30 outside \\[1, 29\\]"),
        (["--model", "gemma3-270m", "--layers", "1-18"], "--layers 18 outside \\[1, 17\\]"),
        (["--prompts", "missing.jsonl"], "no such file"),
        (["--prompts", "PROMPTS", "--task", "needle"], "exclude each other"),
    ],
)
def test_bad_arguments_are_refused_before_the_weights_load(tmp_path, monkeypatch, argv, match):
    monkeypatch.setattr(probe_cli, "load_model", _no_weights)
    prompts = _write(tmp_path / "p.jsonl", {"frames": ["a", "b"], "question": "q", "relevant": [0]})
    argv = [str(prompts) if a == "PROMPTS" else str(tmp_path / a) if a.endswith(".jsonl") else a for a in argv]
    args = main_parser().parse_args(["probe", *argv, "--out", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match=match):
        probe_cli.probe_command(args)
    assert not (tmp_path / "out").exists()


def main_parser():
    from sharp_prune.cli import build_parser

    return build_parser()


def test_the_command_writes_json_png_and_a_table_that_fits_80_columns(tmp_path, monkeypatch, capsys, smollm2):
    monkeypatch.setattr(probe_cli, "load_model", lambda name, dtype: smollm2)
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "probe"
    code = main(["probe", "--task", "needle", "--items", "2", "--layers", "1-2", "--threads", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if not line.startswith("wrote ")]  # paths may be long
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in printed
    header = next(line for line in lines if line.split()[:1] == ["K"])
    assert header.split() == ["K", *VARIANTS]
    assert next(line for line in lines if line.split()[:1] == ["min"]).split()[1:] == [
        str(k) if k is not None else "none"
        for k in json.loads((out / "probe.json").read_text())["runs"][0]["smallest_layer"].values()
    ]
    result = json.loads((out / "probe.json").read_text())
    assert result["options"]["layers"] == [1, 2] and result["model"]["num_layers"] == 30
    assert result["command"].startswith("sharp-prune")
    (run,) = result["runs"]
    assert run["name"] == "needle" and run["items"] == 2 and run["frames"] == [43] and run["relevant_frames"] == [1]
    assert [row["layer"] for row in run["layers"]] == [1, 2]
    for row in run["layers"]:
        assert row["attention"] == "full"
        for variant in VARIANTS:
            cell = row["variants"][variant]
            assert 0.0 <= cell["low"] <= cell["mean"] <= cell["high"] <= 1.0
    assert set(run["smallest_layer"]) == set(VARIANTS)
    assert len(run["per_item"]["ranks"]["last"]) == 2
    assert (out / "probe.png").read_bytes()[:8] == PNG_MAGIC


def test_the_command_probes_a_prompts_file(tmp_path, monkeypatch, capsys, smollm2):
    monkeypatch.setattr(probe_cli, "load_model", lambda name, dtype: smollm2)
    frames = ["A red car waits in the street.", "A dog runs in the park.", "A boat sails on the river."]
    prompts = _write(
        tmp_path / "mine.jsonl",
        {"frames": frames, "question": "What colour is the car?", "relevant": [0]},
        {"frames": [*frames, "A kite flies."], "question": "What flies?", "relevant": [3]},
    )
    out = tmp_path / "probe"
    argv = ["probe", "--prompts", str(prompts), "--layers", "1,3", "--no-plot", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "mine.jsonl: 2 items, 3/4 frames (1 relevant)" in capsys.readouterr().out
    result = json.loads((out / "probe.json").read_text())
    (run,) = result["runs"]
    assert result["options"]["prompts"] == str(prompts) and result["options"]["tasks"] == []
    assert run["per_item"]["labels"] == ["line 1", "line 2"] and [r["layer"] for r in run["layers"]] == [1, 3]
    assert not (out / "probe.png").exists()
