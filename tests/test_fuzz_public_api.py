"""Fuzzing the public API: any argument either works or raises one of the library's own errors.

Types, ranges, shapes and dtypes are drawn at random for every public function and CLI option. Python's and
torch's own exceptions (TypeError from a dataclass, IndexError, a dtype error deep in a kernel) must never escape;
the command line answers bad options with argparse's exit status 2 or one ``sharp-prune: error:`` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from property_settings import property_settings

import sharp_prune as sp
from sharp_prune.cli import build_parser, main
from sharp_prune.cli.bench import options_from_args as bench_options
from sharp_prune.cli.speed import options_from_args as speed_options
from sharp_prune.testing import tiny_causal_lm

FIELDS = [f.name for f in dataclasses.fields(sp.PruneConfig)]
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.sampled_from(["fastv", "sharp", "random", "text", "last", "causal", "subtract", "cached", "temporal_merge"]),
    st.floats(0.0, 1.0),
    st.integers(0, 40),
)
NAMES = st.sampled_from([*FIELDS, "retension", "mthod", "", "layer "])


@functools.cache
def _causal_lm() -> torch.nn.Module:
    return tiny_causal_lm(num_layers=4)


def _untouched(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@given(kwargs=st.dictionaries(NAMES, ANYTHING, max_size=4))
@property_settings(300)
def test_prune_config_builds_or_raises_the_library_s_error(kwargs):
    try:
        config = sp.PruneConfig(**kwargs)
    except sp.SharpPruneError:
        return
    assert sp.PruneConfig.from_dict(config.to_dict()) == config


@given(data=st.dictionaries(st.one_of(NAMES, st.integers(), st.none()), ANYTHING, max_size=4), raw=ANYTHING)
@property_settings(150)
def test_from_dict_reads_or_raises_the_library_s_error(data, raw):
    for value in (data, raw):
        with contextlib.suppress(sp.SharpPruneError):
            sp.PruneConfig.from_dict(value)


@given(
    seq_len=ANYTHING,
    start=ANYTHING,
    num_frames=ANYTHING,
    tokens_per_frame=ANYTHING,
    batch_size=st.one_of(st.integers(-2, 3), ANYTHING),
)
@property_settings(200)
def test_frame_map_for_span_builds_or_raises_the_library_s_error(
    seq_len, start, num_frames, tokens_per_frame, batch_size
):
    try:
        frame_map = sp.frame_map_for_span(seq_len, start, num_frames, tokens_per_frame, batch_size)
    except sp.SharpPruneError:
        return
    assert frame_map.shape == (batch_size, seq_len) and int((frame_map >= 0).sum()) == batch_size * num_frames * (
        tokens_per_frame
    )


DTYPES = [torch.long, torch.int32, torch.int8, torch.uint8, torch.bool, torch.float32, torch.float16]


@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 3), min_size=0, max_size=3),
    fill=st.integers(-3, 5),
    seq_len=st.integers(1, 12),
    batch=st.integers(1, 2),
    method=st.sampled_from(["fastv", "sharp", "random", "uniform", "divprune", "none"]),
    as_map=st.booleans(),
)
@property_settings(60)
def test_declaring_any_tensor_and_running_either_prunes_or_raises(dtype, shape, fill, seq_len, batch, method, as_map):
    model = _causal_lm()
    ids = torch.randint(3, 200, (batch, seq_len), generator=torch.Generator().manual_seed(seq_len))
    if as_map:  # a map of the input's shape with random frame ids
        gen = torch.Generator().manual_seed(fill + 10)
        frame_map = torch.randint(-1, 3, (batch, seq_len), generator=gen).sort(dim=1).values.to(dtype)
    else:
        frame_map = torch.full(shape, fill).to(dtype)
    handle = sp.apply(model, method=method, retention=0.5, layer=2)
    try:
        handle.set_visual_frames(frame_map)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert logits.shape[0] == batch and bool(torch.isfinite(logits).all())
    except sp.SharpPruneError:
        pass
    finally:
        handle.remove()


@given(overrides=st.dictionaries(NAMES, ANYTHING, max_size=3))
@property_settings(100)
def test_apply_attaches_or_raises_leaving_the_model_untouched(overrides):
    model = _causal_lm()
    before = _untouched(model)
    try:
        handle = sp.apply(model, **overrides)
    except sp.SharpPruneError:
        assert _untouched(model) == before
        return
    handle.remove()
    assert _untouched(model) == before


# ----------------------------------------------------------------------------- the command line
OPTION_VALUES = st.sampled_from(["0", "-1", "1", "2", "99", "0.2", "1.5", "nan", "x", "", "fastv,nope", "cuda", "cpu"])


def _argvs(command: str, options: list[str]) -> st.SearchStrategy[list[str]]:
    pair = st.tuples(st.sampled_from(options), OPTION_VALUES).map(list)
    return st.lists(pair, max_size=3).map(lambda pairs: [command] + [x for p in pairs for x in p])


BENCH = [
    "--items",
    "--methods",
    "--retentions",
    "--layers",
    "--frames",
    "--tokens-per-frame",
    "--scenes",
    "--threads",
    "--task",
    "--choices",
]
SPEED = ["--shape", "--frames", "--tokens-per-frame", "--scenes", "--methods", "--retentions", "--layer", "--repeats"]
RUN = ["--retention", "--layer", "--frames", "--max-new-tokens", "--device", "--prefill-repeats", "--method"]


@pytest.mark.parametrize(
    ("command", "options", "validate"),
    [
        ("bench", BENCH, bench_options),
        ("speed", SPEED, speed_options),
        ("run", RUN, None),
        ("viz", RUN[:-1], None),
        ("demo", ["--retention", "--layer"], None),
    ],
)
@given(data=st.data())
@property_settings(40)
def test_cli_options_parse_and_validate_or_exit_2(command, options, validate, data):
    argv = data.draw(_argvs(command, options))
    if command in ("run", "viz"):
        argv += ["--model", "m", "--video", "v", "--question", "q"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        return
    if validate is not None:
        with contextlib.suppress(sp.SharpPruneError):
            validate(args)


def test_a_command_that_fails_prints_one_line_and_exits_2(capsys, monkeypatch, tmp_path):
    """`main` turns any failure into `sharp-prune: error: ...`, no traceback (unexpected ones say so)."""
    import sharp_prune.cli as cli

    def broken(args):
        raise KeyError("a bug")

    assert main(["run", "--model", str(tmp_path / "nope"), "--video", "v.mp4", "--question", "q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sharp-prune: error:") and "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setattr(cli, "_demo", broken)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "unexpected KeyError" in err and "--traceback" in err and "Traceback" not in err
    assert main(["--traceback", "demo"]) == 2
    assert "Traceback" in capsys.readouterr().err
