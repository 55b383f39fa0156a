"""Property-based tests (hypothesis) of every selector and pure stage, on random layouts and tensors.

Each property is checked against facts computed here, independently of the code under test: the budget
formula, set arithmetic on positions, and plain-Python references of small pieces (greedy dedup, frame
ranks, temporal merging). Strategies over-weight the corners: 1-3 visual tokens, retention near 0 and
1, tied / all-equal / zero / huge scores, identical and zero hidden states.

Scale the example counts with SHARP_PRUNE_PROPERTY_SCALE=10 for a longer hunt (the defaults keep both
property files under ~30 s on 2 idle cores). Failures print a `@reproduce_failure` blob; .hypothesis/
keeps the examples that failed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st
from property_settings import property_settings

import sharp_prune as sp
from sharp_prune.methods import Selection, SelectionInput
from sharp_prune.methods.diversity import farthest_point_sampling
from sharp_prune.methods.sharp.posc import EPS, calibrate, frame_local_index, tile_blank_frame
from sharp_prune.methods.sharp.regd import dedup_greedy, segment_registers
from sharp_prune.methods.sharp.segm import frame_descriptors, segment_attention, segment_frames
from sharp_prune.methods.uniform import uniform_indices
from sharp_prune.steps.keep_plan import build_keep_plan, decode_columns, slice_layer_inputs, slice_mask
from sharp_prune.steps.locate import VisualLayout
from sharp_prune.steps.pre_stage import temporal_merge_keep

METHODS = sp.available_methods()
# Retention corners first: hypothesis draws sampled_from's early elements when shrinking.
RETENTIONS = st.one_of(
    st.sampled_from([1.0, 1e-6, 0.001, 0.999, 0.5, 0.125]),
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
)
# N: 1, 2, 3 on purpose, then anything up to ~200.
NUM_VISUAL = st.one_of(st.integers(1, 3), st.integers(1, 200))


# ----------------------------------------------------------------------------- strategies
@st.composite
def frame_rows(draw: st.DrawFn, n: int) -> tuple[list[int], tuple[int, int] | None]:
    """Frame ids of one sample's n visual tokens (non-decreasing), and a raster grid when frames are equal.

    Frames are random-length runs, or equal runs of a divisor of n; ids are 0..F-1, or (as a generic
    adapter's frame map allows) start later and skip ids.
    """
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # one draw: long lists overrun hypothesis' buffer
    if draw(st.booleans()):
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        per_frame = draw(st.sampled_from(divisors))
        lengths = [per_frame] * (n // per_frame)
        side = max(d for d in range(1, int(math.isqrt(per_frame)) + 1) if per_frame % d == 0)
        grid = (side, per_frame // side)
    else:
        num_frames = draw(st.integers(1, min(n, 40)))
        bounds = [0, *sorted(rng.sample(range(1, n), num_frames - 1)), n]
        lengths = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        grid = None
    if draw(st.integers(0, 3)) == 0:  # gaps and an offset in the frame ids (generic frame maps)
        labels = [draw(st.integers(0, 2))]
        for _ in lengths[1:]:
            labels.append(labels[-1] + rng.randint(1, 3))
    else:
        labels = list(range(len(lengths)))
    ids = [label for label, length in zip(labels, lengths, strict=True) for _ in range(length)]
    return ids, grid


@st.composite
def layouts(draw: st.DrawFn, n: int | None = None, batch: int | None = None) -> VisualLayout:
    """A random `VisualLayout`: 1-3 samples of the same N, each with its own frames and positions."""
    n = draw(NUM_VISUAL) if n is None else n
    b = draw(st.integers(1, 3)) if batch is None else batch
    rows = [draw(frame_rows(n)) for _ in range(b)]
    extra = draw(st.integers(0, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    positions = torch.stack([torch.randperm(n + extra, generator=gen)[:n].sort().values for _ in range(b)])
    grids = {grid for _, grid in rows}
    grid = next(iter(grids)) if len(grids) == 1 else None
    return VisualLayout(positions=positions, frame_ids=torch.tensor([ids for ids, _ in rows]), grid=grid)


def _random_matrix(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Finite fp32 scores of a given character (see SCORE_KINDS)."""
    if kind == "normal":
        return torch.randn(shape, generator=gen)
    if kind == "attention":
        return torch.rand(shape, generator=gen) / shape[-1]
    if kind == "ties":
        return torch.randint(0, 3, shape, generator=gen).float()
    if kind == "equal":
        return torch.full(shape, 0.25)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "huge":
        return torch.randn(shape, generator=gen) * 1e37
    if kind == "tiny":
        return torch.randn(shape, generator=gen) * 1e-42  # subnormal
    if kind == "extreme":  # float32's largest finite magnitudes next to tiny ones
        big = torch.finfo(torch.float32).max
        choice = torch.randint(0, 4, shape, generator=gen)
        values = torch.tensor([big, -big, 1e-45, 0.0])
        return values[choice]
    raise ValueError(kind)


SCORE_KINDS = ("normal", "attention", "ties", "equal", "zeros", "huge", "tiny", "extreme")
HIDDEN_KINDS = ("normal", "duplicates", "identical", "zeros", "some_zero", "scaled")


def _random_hidden(kind: str, b: int, n: int, dim: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """[b, n, dim] hidden states of a given character (see HIDDEN_KINDS)."""
    if kind == "normal":
        hidden = torch.randn(b, n, dim, generator=gen)
    elif kind == "duplicates":  # a few distinct states, each repeated (with a little noise or exactly)
        distinct = torch.randn(b, 3, dim, generator=gen)
        pick = torch.randint(0, 3, (b, n), generator=gen)
        hidden = distinct.gather(1, pick[..., None].expand(b, n, dim))
        hidden = hidden + 0.01 * torch.randn(b, n, dim, generator=gen) * torch.randint(0, 2, (b, n, 1), generator=gen)
    elif kind == "identical":
        hidden = torch.randn(b, 1, dim, generator=gen).expand(b, n, dim).clone()
    elif kind == "zeros":
        hidden = torch.zeros(b, n, dim)
    elif kind == "some_zero":
        hidden = torch.randn(b, n, dim, generator=gen) * torch.randint(0, 2, (b, n, 1), generator=gen)
    elif kind == "scaled":
        scale = torch.tensor([1e-6, 1e4])[torch.randint(0, 2, (b, n, 1), generator=gen)]
        hidden = torch.randn(b, n, dim, generator=gen) * scale
    else:
        raise ValueError(kind)
    return hidden.to(dtype)


@dataclass
class Case:
    """One pure-selector case: the input, and what generated it (for messages)."""

    inputs: SelectionInput
    config: sp.PruneConfig
    description: str
    raw_scores: torch.Tensor | None = None  # before calibration (the engine calibrates against `prior`)
    prior: torch.Tensor | None = None


def _segments_for(draw: st.DrawFn, layout: VisualLayout, hidden: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[b, N] segment ids: SegM on the frames' descriptors, or random non-decreasing ids per token."""
    mode = draw(st.sampled_from(["segm", "random", "one"]))
    b, n = layout.positions.shape
    if mode == "one":
        return torch.zeros(b, n, dtype=torch.long)
    if mode == "random":
        steps = (torch.rand(b, n, generator=gen) < draw(st.sampled_from([0.05, 0.3, 1.0]))).long()
        steps[:, 0] = 0
        return steps.cumsum(dim=1)
    tau = draw(st.floats(-1.0, 1.0))
    cap = draw(st.integers(1, 10))
    rows = []
    for row in range(b):
        descriptors = frame_descriptors(hidden[row], layout.frame_ids[row])
        rows.append(segment_frames(descriptors, tau, cap)[layout.frame_ids[row]])
    return torch.stack(rows)


@st.composite
def selection_cases(draw: st.DrawFn, method: str | None = None) -> Case:
    """A full `SelectionInput` for `method` (or a random one) with a random config."""
    method = draw(st.sampled_from(METHODS)) if method is None else method
    layout = draw(layouts())
    b, n = layout.positions.shape
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    knobs: dict = dict(method=method, retention=draw(RETENTIONS), seed=draw(st.integers(0, 2**31 - 1)))
    if method == "feather":
        knobs["feather_uniform"] = draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0))
    if method == "sharp":
        knobs.update(
            segm=draw(st.booleans()),
            posc=draw(st.booleans()),
            regd=draw(st.booleans()),
            posc_mode=draw(st.sampled_from(["subtract", "divide"])),
            posc_lambda=draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 10.0)),
            regd_delta=draw(st.sampled_from([0.9, 1.0, -1.0, 0.0]) | st.floats(-1.0, 1.0)),
            regd_rho=draw(st.sampled_from([0.2, 0.0, 1.0]) | st.floats(0.0, 1.0)),
            regd_registers=draw(st.none() | st.integers(0, 12)),
            regd_merge=draw(st.booleans()),
        )
    config = sp.PruneConfig(**knobs)
    score_kind = draw(st.sampled_from(SCORE_KINDS))
    hidden_kind = draw(st.sampled_from(HIDDEN_KINDS))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    dim = draw(st.integers(1, 16))
    raw = _random_matrix(score_kind, (b, n), gen) if config.query != "none" else None
    hidden = _random_hidden(hidden_kind, b, n, dim, gen, dtype)
    prior = None
    if config.needs_prior:
        prior_kind = draw(st.sampled_from(["attention", "zeros", "equal", "same"]))
        prior = raw.abs().clone() if prior_kind == "same" else _random_matrix(prior_kind, (b, n), gen).abs()
    segments = _segments_for(draw, layout, hidden, gen) if config.needs_segments else None
    budget = config.budget(n)
    inputs = SelectionInput(
        layout=layout,
        budget=budget,
        scores=config.calibrate(raw, prior) if prior is not None else raw,  # the engine's calibrate step
        hidden=hidden if config.needs_hidden else None,
        config=config,
        segments=segments,
    )
    description = f"{method} N={n} b={b} B={budget} scores={score_kind} hidden={hidden_kind}/{dtype}"
    return Case(inputs=inputs, config=config, description=description, raw_scores=raw, prior=prior)


def _clone_input(inputs: SelectionInput) -> SelectionInput:
    """Deep copy of the tensors of a `SelectionInput` (to detect in-place changes)."""

    def copy(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clone()

    layout = VisualLayout(copy(inputs.layout.positions), copy(inputs.layout.frame_ids), inputs.layout.grid)
    return SelectionInput(
        layout=layout,
        budget=inputs.budget,
        scores=copy(inputs.scores),
        hidden=copy(inputs.hidden),
        config=inputs.config,
        segments=copy(inputs.segments),
    )


def _same_tensors(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _expected_budget(method: str, retention: float, n: int) -> int:
    """B from the documented formula, computed here: max(1, round(r * N)), all of N for `none`."""
    if method == "none":
        return n
    return min(n, max(1, round(retention * n)))


# ----------------------------------------------------------------------------- budget
@given(n=st.one_of(st.integers(1, 3), st.integers(1, 10**7)), retention=RETENTIONS)
@example(n=1, retention=1e-6)
@example(n=2, retention=0.25)  # round(0.5) = 0 -> clamped to 1
@example(n=3, retention=0.999)
@example(n=2, retention=0.75)  # round(1.5) = 2 (half to even)
@property_settings(500)
def test_budget_is_between_one_and_n_and_follows_the_formula(n: int, retention: float) -> None:
    config = sp.PruneConfig(method="fastv", retention=retention)
    budget = config.budget(n)
    assert isinstance(budget, int)
    assert 1 <= budget <= n
    assert abs(budget - retention * n) <= 0.5 or budget == 1
    if retention == 1.0:
        assert budget == n
    # more retention never keeps fewer tokens
    assert config.replace(retention=min(1.0, retention * 1.5)).budget(n) >= budget
    assert config.budget(0) == 0


# ----------------------------------------------------------------------------- every selector
def _check_structure(case: Case, selection: Selection) -> None:
    """Shape, order, range and dtype of a selection, plus the register and hidden-state contracts."""
    inputs = case.inputs
    b, n = inputs.layout.positions.shape
    budget = _expected_budget(case.config.method, case.config.retention, n)
    keep = selection.keep
    assert keep.dtype == torch.long, case.description
    assert tuple(keep.shape) == (b, budget), case.description
    if budget > 1:
        assert bool((keep.diff(dim=1) > 0).all()), f"not strictly increasing: {case.description}"
    assert bool((keep >= 0).all()) and bool((keep < n).all()), case.description
    if selection.hidden is not None:
        dim = inputs.hidden.shape[-1]
        assert tuple(selection.hidden.shape) == (b, budget, dim), case.description
        assert bool(torch.isfinite(selection.hidden.float()).all()), case.description
    if selection.is_register is not None:
        assert selection.is_register.dtype == torch.bool
        assert tuple(selection.is_register.shape) == (b, budget)


def _check_registers(case: Case, selection: Selection) -> None:
    """RegD's promises (docs/method.md, `segment_registers`), checked from the input tensors.

    A register sits at a dropped token of segment s (the middle one) and holds the mean of s's dropped
    tokens: so its state lies inside the per-coordinate range of s's hidden states. At most one register
    per segment, at most min(R, B // 8) in all. With merging off, the state and slot are exactly the
    mean and the middle of the segment's tokens not kept as themselves, and kept tokens keep their state.
    With merging on and delta >= 0, a kept token's state is the mean of near-duplicates of it, so its
    cosine with the token's own state stays above delta.
    """
    inputs, config = case.inputs, case.config
    if selection.is_register is None:
        return
    for row in range(inputs.layout.batch_size):
        keep, registers = selection.keep[row], selection.is_register[row]
        segments, hidden = inputs.segments[row], inputs.hidden[row].float()
        states = selection.hidden[row].float()
        register_segments = segments[keep[registers]].tolist()
        assert len(register_segments) == len(set(register_segments)), "two registers in one segment"
        wanted = config.regd_registers if config.regd_registers is not None else int(segments.max()) + 1
        assert len(register_segments) <= min(wanted, inputs.budget // 8)
        kept_tokens = set(keep[~registers].tolist())
        tol = 1e-2 if inputs.hidden.dtype == torch.bfloat16 else 1e-5
        for slot, s, state in zip(keep[registers].tolist(), register_segments, states[registers], strict=True):
            members = (segments == s).nonzero().flatten()
            low, high = hidden[members].min(dim=0).values, hidden[members].max(dim=0).values
            margin = tol * (1 + high.abs().max())
            assert bool((state >= low - margin).all() and (state <= high + margin).all()), (
                f"register at {slot} is not a summary of its segment {s}: {case.description}"
            )
            if not config.regd_merge:
                dropped = [m for m in members.tolist() if m not in kept_tokens]
                assert slot == dropped[(len(dropped) - 1) // 2]
                expected = hidden[dropped].mean(dim=0)
                torch.testing.assert_close(state, expected, atol=margin, rtol=tol)
        own = hidden[keep[~registers]]
        if not config.regd_merge:
            assert torch.equal(states[~registers], own), "a kept token's state changed without merging"
        elif config.regd_delta >= 0:
            unit_own, unit_state = F.normalize(own, dim=-1), F.normalize(states[~registers], dim=-1)
            live = own.norm(dim=-1) > 1e-3  # cosine is meaningless for (near-)zero states
            cosine = (unit_own * unit_state).sum(dim=-1)[live]
            assert bool((cosine >= config.regd_delta - 5 * tol).all()), case.description


def _check_choice(case: Case, selection: Selection) -> None:
    """Method-specific facts: what a top-B choice, a uniform stride or a content-blind draw must satisfy."""
    inputs, config = case.inputs, case.config
    method = config.method
    b, n = inputs.layout.positions.shape
    for row in range(b):
        keep = selection.keep[row].tolist()
        dropped = sorted(set(range(n)) - set(keep))
        if method == "none":
            assert keep == list(range(n))
        if method == "fastv" or (method == "sharp" and (not config.regd or inputs.budget >= n)):
            scores = inputs.scores[row]
            if method == "sharp" and config.posc:
                # calibrated as documented, from the raw scores and the prior
                raw, prior = case.raw_scores[row], case.prior[row]
                scores = raw / (prior + EPS) if config.posc_mode == "divide" else raw - config.posc_lambda * prior
                assume(not bool(torch.isnan(scores).any()))
                assert torch.equal(scores, inputs.scores[row]), case.description
            assume(not bool(torch.isnan(scores).any()))  # lambda * huge prior - huge score may overflow to nan
            if dropped:
                assert float(scores[keep].min()) >= float(scores[dropped].max()), case.description
        if method == "feather":
            share = min(inputs.budget, round(config.feather_uniform * inputs.budget))
            uniform = uniform_indices(inputs.layout.frame_ids[row], share)
            assert set(uniform.tolist()) <= set(keep), case.description
            rest = sorted(set(keep) - set(uniform.tolist()))
            if rest and dropped:
                scores = inputs.scores[row]
                assert float(scores[rest].min()) >= float(scores[dropped].max()), case.description


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
@property_settings(250)
def test_every_selector_keeps_exactly_b_sorted_unique_in_range_and_is_deterministic(
    method: str, data: st.DataObject
) -> None:
    case = data.draw(selection_cases(method), label="case")
    selector = case.config.selector()
    before = _clone_input(case.inputs)
    first = selector.select(case.inputs)
    _check_structure(case, first)
    # the selector must not change its inputs in place (the engine reuses scores and hidden states)
    for name in ("scores", "hidden", "segments"):
        assert _same_tensors(getattr(before, name), getattr(case.inputs, name)), f"{name} changed in place"
    # same input and seed -> the same plan, from a fresh selector too
    second = case.config.selector().select(_clone_input(case.inputs))
    for name in ("keep", "hidden", "is_register"):
        assert _same_tensors(getattr(first, name), getattr(second, name)), f"{name} differs on a rerun"
    _check_registers(case, first)
    _check_choice(case, first)


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
@property_settings(60)
def test_a_batch_selects_as_its_samples_alone(method: str, data: st.DataObject) -> None:
    """Row i of a batch's plan is the plan of sample i run alone (every selector works per sample)."""
    case = data.draw(selection_cases(method), label="case")
    inputs = case.inputs
    whole = case.config.selector().select(inputs)
    for row in range(inputs.layout.batch_size):

        def one(t: torch.Tensor | None, row: int = row) -> torch.Tensor | None:
            return None if t is None else t[row : row + 1]

        single = SelectionInput(
            layout=VisualLayout(one(inputs.layout.positions), one(inputs.layout.frame_ids), inputs.layout.grid),
            budget=inputs.budget,
            scores=one(inputs.scores),
            hidden=one(inputs.hidden),
            config=inputs.config,
            segments=one(inputs.segments),
        )
        alone = case.config.selector().select(single)
        for name in ("keep", "hidden", "is_register"):
            assert _same_tensors(one(getattr(whole, name)), getattr(alone, name)), f"{name} of row {row}"


@pytest.mark.parametrize("method", ["none", "random", "uniform"])
@given(data=st.data())
@property_settings(40)
def test_content_blind_methods_ignore_scores_and_states(method: str, data: st.DataObject) -> None:
    """`none`, `random` and `uniform` depend on the layout (and seed) only; `random` on the seed."""
    case = data.draw(selection_cases(method), label="case")
    inputs = case.inputs
    b, n = inputs.layout.positions.shape
    other = SelectionInput(
        layout=inputs.layout,
        budget=inputs.budget,
        scores=torch.randn(b, n, generator=torch.Generator().manual_seed(n)),
        hidden=torch.randn(b, n, 4, generator=torch.Generator().manual_seed(b)),
        config=inputs.config,
    )
    selector = case.config.selector()
    assert torch.equal(selector.select(inputs).keep, selector.select(other).keep)
    if method == "random":
        # every sample draws from a generator seeded the same way: rows of one layout agree
        keep = selector.select(inputs).keep
        assert bool((keep == keep[:1]).all())


def test_random_seed_changes_the_draw() -> None:
    """Different seeds give different plans (checked on a case where a collision is ~impossible)."""
    layout = VisualLayout(positions=torch.arange(200)[None], frame_ids=torch.zeros(1, 200, dtype=torch.long))
    plans = set()
    for seed in range(5):
        config = sp.PruneConfig(method="random", retention=0.5, seed=seed)
        inputs = SelectionInput(layout=layout, budget=config.budget(200), scores=None, hidden=None, config=config)
        plans.add(tuple(config.selector().select(inputs).keep[0].tolist()))
    assert len(plans) == 5


# ----------------------------------------------------------------------------- uniform stride
@given(ids_grid=st.integers(1, 200).flatmap(frame_rows), data=st.data())
@property_settings(300)
def test_uniform_quotas_follow_frame_sizes(
    ids_grid: tuple[list[int], tuple[int, int] | None], data: st.DataObject
) -> None:
    """Frames get floor or ceil of their proportional share; below one token per frame, one each at most."""
    ids, _ = ids_grid
    n = len(ids)
    budget = data.draw(st.integers(1, n), label="budget")
    frame_ids = torch.tensor(ids)
    picked = uniform_indices(frame_ids, budget)
    assert picked.numel() == budget
    assert picked.tolist() == sorted(set(picked.tolist())) and int(picked.min()) >= 0 and int(picked.max()) < n
    labels, sizes = torch.unique_consecutive(frame_ids, return_counts=True)
    per_frame = {int(label): 0 for label in labels}
    for index in picked.tolist():
        per_frame[ids[index]] += 1
    if budget < len(sizes):
        assert max(per_frame.values()) == 1
    else:
        for label, size in zip(labels.tolist(), sizes.tolist(), strict=True):
            share = budget * size / n
            assert math.floor(share) <= per_frame[label] <= math.ceil(share)


# ----------------------------------------------------------------------------- keep plan
@dataclass
class Sequence:
    """A padded batch of text + visual tokens: which positions are visual, which are padding."""

    layout: VisualLayout
    valid: torch.Tensor  # [b, L] bool, False at padding
    seq_len: int


@st.composite
def sequences(draw: st.DrawFn) -> Sequence:
    """Samples of text before, between and after N visual tokens, padded left or right to one length."""
    n = draw(NUM_VISUAL.filter(lambda v: v <= 80))
    b = draw(st.integers(1, 3))
    rows = []
    for _ in range(b):
        # kinds: 0 = text, 1 = visual; text separators may sit between visual tokens
        separators = draw(st.lists(st.integers(0, n), max_size=4))
        kinds = [0] * draw(st.integers(0, 5))
        for i in range(n):
            kinds += [0] * separators.count(i) + [1]
        kinds += [0] * draw(st.integers(0, 5))
        rows.append(kinds)
    width = max(len(r) for r in rows) + draw(st.integers(0, 3))
    side = draw(st.sampled_from(["left", "right"]))
    positions, valid = [], torch.zeros(b, width, dtype=torch.bool)
    for i, kinds in enumerate(rows):
        offset = width - len(kinds) if side == "left" else 0
        valid[i, offset : offset + len(kinds)] = True
        positions.append([offset + j for j, kind in enumerate(kinds) if kind == 1])
    frame_ids = torch.stack([torch.tensor(draw(frame_rows(n))[0]) for _ in range(b)])
    layout = VisualLayout(positions=torch.tensor(positions), frame_ids=frame_ids)
    return Sequence(layout=layout, valid=valid, seq_len=width)


@given(seq=sequences(), data=st.data())
@example(
    seq=Sequence(
        layout=VisualLayout(positions=torch.tensor([[0]]), frame_ids=torch.tensor([[0]])),
        valid=torch.ones(1, 1, dtype=torch.bool),
        seq_len=1,
    ),
    data=None,
).via("a single visual token and nothing else")
@property_settings(200)
def test_keep_plan_keeps_every_text_token_and_exactly_b_visual_ones(seq: Sequence, data: st.DataObject | None) -> None:
    layout, seq_len = seq.layout, seq.seq_len
    b, n = layout.positions.shape
    budget = data.draw(st.integers(1, n), label="budget") if data is not None else n
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed") if data is not None else 0
    gen = torch.Generator().manual_seed(seed)
    # the selector's local indices, in any order, with per-slot states aligned to them
    keep_local = torch.stack([torch.randperm(n, generator=gen)[:budget] for _ in range(b)])
    dim = 5
    states = torch.randn(b, budget, dim, generator=gen)
    plan = build_keep_plan(layout, keep_local, seq_len, states)
    assert plan.seq_len == seq_len and plan.kept_len == seq_len - n + budget
    for row in range(b):
        index = plan.index[row].tolist()
        visual = set(layout.positions[row].tolist())
        chosen = {int(layout.positions[row, i]) for i in keep_local[row].tolist()}
        assert index == sorted(set(index)) and all(0 <= p < seq_len for p in index)
        assert set(range(seq_len)) - visual <= set(index), "a text or padding position was dropped"
        assert set(index) & visual == chosen and len(set(index) & visual) == budget
        assert plan.kept_visual[row].tolist() == sorted(chosen)
        # states follow their tokens through the sort
        for slot, position in enumerate(plan.kept_visual[row].tolist()):
            local = layout.positions[row].tolist().index(position)
            source = keep_local[row].tolist().index(local)
            assert torch.equal(plan.visual_hidden[row, slot], states[row, source])

    # slicing what a decoder layer reads, all together, by the plan
    hidden = torch.randn(b, seq_len, dim, generator=gen)
    text_positions = torch.arange(seq_len).expand(b, -1)
    mrope_positions = torch.randint(0, 50, (3, b, seq_len), generator=gen)
    cos, sin = torch.randn(1, seq_len, 4, generator=gen), torch.randn(1, seq_len, 4, generator=gen)
    mask4 = torch.randn(b, 1, seq_len, seq_len, generator=gen)
    for position_ids in (text_positions, mrope_positions):
        sliced = slice_layer_inputs(
            hidden, plan, position_embeddings=(cos, sin), position_ids=position_ids, attention_mask=mask4
        )
        sliced_hidden = sliced.hidden_states
        for row in range(b):
            index = plan.index[row]
            expected = hidden[row, index].clone()
            slots = [index.tolist().index(p) for p in plan.kept_visual[row].tolist()]
            expected[slots] = plan.visual_hidden[row]
            assert torch.equal(sliced_hidden[row], expected)
            assert torch.equal(sliced.position_embeddings[0][row], cos[0, index])
            assert torch.equal(sliced.position_embeddings[1][row], sin[0, index])
            got_ids = sliced.position_ids[:, row] if position_ids.ndim == 3 else sliced.position_ids[row]
            want_ids = position_ids[:, row, index] if position_ids.ndim == 3 else position_ids[row, index]
            assert torch.equal(got_ids, want_ids)
            assert torch.equal(sliced.attention_mask[row, 0], mask4[row, 0][index][:, index])
    # a 2-D padding mask keeps the kept columns; decoding columns append the new positions
    mask2 = seq.valid.long()
    assert torch.equal(slice_mask(mask2, None, plan.index), mask2.gather(1, plan.index))
    columns = decode_columns(plan, seq_len + 2)
    assert torch.equal(columns[:, -2:], torch.tensor([seq_len, seq_len + 1]).expand(b, -1))


# ----------------------------------------------------------------------------- SegM
@given(
    num_frames=st.integers(1, 30),
    dim=st.integers(1, 8),
    tau=st.sampled_from([0.9, -1.0, 1.0]) | st.floats(-1.0, 1.0),
    cap=st.integers(1, 10),
    seed=st.integers(0, 2**31 - 1),
    repeats=st.booleans(),
)
@property_settings(300)
def test_segment_frames_cuts_below_tau_and_respects_the_cap(
    num_frames: int, dim: int, tau: float, cap: int, seed: int, repeats: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    descriptors = F.normalize(torch.randn(num_frames, dim, generator=gen), dim=-1)
    if repeats:  # runs of identical frames (similarity 1) and ties between boundaries
        descriptors = descriptors[torch.randint(0, 2, (num_frames,), generator=gen).cumsum(0).clamp(max=num_frames - 1)]
    segments = segment_frames(descriptors, tau, cap)
    assert segments.shape == (num_frames,) and segments.dtype == torch.long
    assert int(segments[0]) == 0
    steps = segments.diff()
    assert bool(((steps == 0) | (steps == 1)).all()), "segment ids must be 0, 1, 2, ... in frame order"
    assert int(segments.max()) + 1 <= cap
    # The cosine as SegM computes it, compared with tau in fp32 as SegM does: identical frames may round
    # to just below 1 (tau = 1 then cuts them), and a tau within fp32 rounding of -1 rounds to -1.
    similarity = (descriptors[:-1] * descriptors[1:]).sum(dim=-1).tolist()
    tau32 = torch.tensor(tau, dtype=torch.float32).item()
    cuts = [f for f in range(num_frames - 1) if int(steps[f]) == 1]
    below = [f for f, s in enumerate(similarity) if s < tau32]
    if len(below) <= cap - 1:
        assert cuts == below
    else:
        assert len(cuts) == cap - 1
        kept = [similarity[f] for f in cuts]
        others = [similarity[f] for f in range(num_frames - 1) if f not in cuts]
        assert not kept or max(kept) <= min(others), "a sharper cut was dropped for a softer one"


@st.composite
def segment_maps(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, L] SegM maps (segment id per visual token, -1 for text) with padding, and the key-valid mask."""
    b = draw(st.integers(1, 2))
    length = draw(st.integers(2, 28))
    rows, valid = [], torch.ones(b, length, dtype=torch.bool)
    for i in range(b):
        pad = draw(st.integers(0, length // 3))
        left = draw(st.booleans())
        real = length - pad
        kinds = draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=real, max_size=real))  # -1 text, 0 same, 1 cut
        row, segment, seen = [], 0, False
        for kind in kinds:
            if kind == -1:
                row.append(-1)
            else:
                segment += 1 if (kind == 1 and seen) else 0
                seen = True
                row.append(segment)
        full = [-1] * pad + row if left else row + [-1] * pad
        if left:
            valid[i, :pad] = False
        else:
            valid[i, real:] = False
        rows.append(full)
    return torch.tensor(rows), valid


@given(maps=segment_maps(), within=st.sampled_from(["causal", "bidirectional"]), group=st.sampled_from([1, 2]))
@property_settings(100)
def test_segm_attention_equals_a_dense_mask_on_any_layout(
    maps: tuple[torch.Tensor, torch.Tensor], within: str, group: int
) -> None:
    """Block-wise SegM attention = sdpa with the dense SegM mask, for text anywhere and padding either side."""
    segment_map, valid = maps
    b, length = segment_map.shape
    heads, dim = 4, 8
    gen = torch.Generator().manual_seed(length)
    query = torch.randn(b, heads, length, dim, generator=gen)
    key = torch.randn(b, heads // group, length, dim, generator=gen)
    value = torch.randn(b, heads // group, length, dim, generator=gen)
    got = segment_attention(query, key, value, segment_map, valid, dim**-0.5, within)
    q_seg, k_seg = segment_map[:, :, None], segment_map[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None]
    same = (q_seg == k_seg) & (q_seg >= 0)
    visual_row_allowed = (k_seg < 0) & causal | same & (causal | (within == "bidirectional"))
    allowed = torch.where(q_seg < 0, causal, visual_row_allowed) & valid[:, None, :]
    expected = F.scaled_dot_product_attention(
        query,
        key.repeat_interleave(group, dim=1),
        value.repeat_interleave(group, dim=1),
        attn_mask=allowed[:, None],
        scale=dim**-0.5,
    ).transpose(1, 2)
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- PosC
@given(layout=layouts(), seed=st.integers(0, 2**31 - 1), blank_len=st.integers(1, 20), data=st.data())
@property_settings(150)
def test_blank_frame_tiling_restarts_at_every_frame(
    layout: VisualLayout, seed: int, blank_len: int, data: st.DataObject
) -> None:
    """Token i of every frame gets blank token i, also for a subset of the tokens (pre-stage survivors)."""
    local = frame_local_index(layout.frame_ids)
    gen = torch.Generator().manual_seed(seed)
    blank = torch.randn(blank_len, 3, generator=gen)
    tiled = tile_blank_frame(blank, layout.frame_ids)
    b, n = layout.positions.shape
    count = data.draw(st.integers(1, n), label="survivors")
    kept = torch.stack([torch.randperm(n, generator=gen)[:count].sort().values for _ in range(b)])
    tiled_kept = tile_blank_frame(blank, layout.frame_ids, kept)
    for row in range(b):
        ids = layout.frame_ids[row].tolist()
        place = [i - ids.index(frame) for i, frame in enumerate(ids)]  # rank inside the whole frame
        assert local[row].tolist() == place
        assert torch.equal(tiled[row], blank[torch.tensor(place) % blank_len])
        survivors = kept[row].tolist()
        assert torch.equal(tiled_kept[row], blank[torch.tensor([place[i] for i in survivors]) % blank_len])


@given(
    kind=st.sampled_from(SCORE_KINDS),
    prior_kind=st.sampled_from(["attention", "zeros", "equal"]),
    lam=st.floats(0.0, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
@property_settings(100)
def test_calibration_is_the_documented_formula(kind: str, prior_kind: str, lam: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = _random_matrix(kind, (2, 17), gen)
    prior = _random_matrix(prior_kind, (2, 17), gen)
    for mode in ("subtract", "divide"):
        got = calibrate(scores, prior, mode, lam)
        for s, p, c in zip(scores.flatten().tolist(), prior.flatten().tolist(), got.flatten().tolist(), strict=True):
            want = s - lam * p if mode == "subtract" else s / (p + EPS)
            # fp32 rounding of each operand bounds the error (cancellation makes a relative bound useless)
            bound = 1e-6 * (abs(s) + lam * abs(p)) if mode == "subtract" else 1e-6 * abs(want)
            assert abs(c - want) <= bound + 1e-44 or (math.isinf(c) and abs(want) > 3e38)


# ----------------------------------------------------------------------------- RegD
def _dedup_reference(scores: list[float], unit: torch.Tensor, count: int, delta: float) -> tuple[list[int], list[int]]:
    """Greedy dedup, one token at a time, as docs/method.md states it."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    accepted: list[int] = []
    duplicate_of = [-1] * len(scores)
    for token in order:
        if len(accepted) >= count:
            break
        if accepted:
            similarities = [float(unit[token] @ unit[a]) for a in accepted]
            best = max(range(len(accepted)), key=lambda j: (similarities[j], -j))
            if similarities[best] > delta:
                duplicate_of[token] = accepted[best]
                continue
        accepted.append(token)
    return accepted, duplicate_of


@given(
    n=NUM_VISUAL,
    hidden_kind=st.sampled_from(HIDDEN_KINDS),
    score_kind=st.sampled_from(["normal", "ties", "equal"]),
    delta=st.sampled_from([0.9, 0.0, -1.0, 1.0]) | st.floats(-1.0, 1.0),
    block=st.integers(1, 64),
    data=st.data(),
)
@property_settings(150)
def test_dedup_greedy_matches_the_one_by_one_walk(
    n: int, hidden_kind: str, score_kind: str, delta: float, block: int, data
) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    unit = F.normalize(_random_hidden(hidden_kind, 1, n, 6, gen, torch.float32)[0], dim=-1)
    # nudge similarities away from delta: the block path and the reference round differently
    assume(not bool(((unit @ unit.T - delta).abs() < 1e-5).any()))
    scores = _random_matrix(score_kind, (n,), gen)
    count = data.draw(st.integers(0, n), label="count")
    accepted, duplicate_of = dedup_greedy(scores, unit, count, delta, block=block)
    want_accepted, want_duplicates = _dedup_reference(scores.tolist(), unit, count, delta)
    assert accepted.tolist() == want_accepted
    assert duplicate_of.tolist() == want_duplicates


@given(
    n=NUM_VISUAL,
    hidden_kind=st.sampled_from(HIDDEN_KINDS),
    data=st.data(),
)
@property_settings(150)
def test_farthest_point_sampling_picks_distinct_candidates_farthest_first(
    n: int, hidden_kind: str, data: st.DataObject
) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    unit = F.normalize(_random_hidden(hidden_kind, 1, n, 5, gen, torch.float32)[0], dim=-1)
    kept = torch.rand(n, generator=gen) < data.draw(st.sampled_from([0.0, 0.2, 0.8]), label="kept share")
    candidates = torch.rand(n, generator=gen) < data.draw(st.sampled_from([1.0, 0.5, 0.1]), label="candidate share")
    count = data.draw(st.integers(0, n + 2), label="count")
    picks = farthest_point_sampling(unit, count, kept=kept, candidates=candidates)
    assert picks.numel() == min(count, int(candidates.sum()))
    assert len(set(picks.tolist())) == picks.numel()
    assert all(bool(candidates[p]) for p in picks.tolist())
    # each pick is a farthest remaining candidate from everything kept so far (max-min cosine distance);
    # with nothing kept, the first is the candidate least similar to the candidates' mean
    remaining = candidates.clone()
    if bool(kept.any()):
        nearest = (unit @ unit[kept].T).max(dim=1).values
    elif picks.numel():
        towards_mean = unit @ unit[candidates].mean(dim=0)
        assert float(towards_mean[picks[0]]) <= float(towards_mean[candidates].min()) + 1e-6
        nearest = unit @ unit[picks[0]]
        remaining[picks[0]] = False
    for i, pick in enumerate(picks.tolist()):
        if not bool(kept.any()) and i == 0:
            continue
        assert float(nearest[pick]) <= float(nearest[remaining].min()) + 1e-6, f"pick {i} is not a farthest one"
        nearest = torch.maximum(nearest, unit @ unit[pick])
        remaining[pick] = False


@given(
    n=NUM_VISUAL,
    data=st.data(),
)
@property_settings(150)
def test_segment_registers_summarise_their_own_segment(n: int, data: st.DataObject) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    steps = (torch.rand(n, generator=gen) < data.draw(st.sampled_from([0.0, 0.1, 0.5]), label="cut rate")).long()
    steps[0] = 0
    segments = steps.cumsum(0)
    dropped = torch.rand(n, generator=gen) < data.draw(st.sampled_from([0.0, 0.5, 1.0]), label="dropped share")
    hidden = torch.randn(n, 4, generator=gen)
    cap = data.draw(st.integers(0, 6), label="cap")
    slots, states = segment_registers(segments, dropped, hidden, cap)
    eligible = {s: (segments == s) & dropped for s in segments.unique().tolist()}
    eligible = {s: m.nonzero().flatten() for s, m in eligible.items() if bool(m.any())}
    assert slots.numel() == min(cap, len(eligible)) and states.shape == (slots.numel(), 4)
    seen = []
    for slot, state in zip(slots.tolist(), states, strict=True):
        s = int(segments[slot])
        members = eligible[s]
        assert slot == int(members[(members.numel() - 1) // 2]), "register not at its segment's middle dropped token"
        torch.testing.assert_close(state, hidden[members].mean(dim=0))
        seen.append(s)
    assert seen == sorted(set(seen))
    # the largest segments win when capped
    if seen:
        smallest_kept = min(eligible[s].numel() for s in seen)
        assert all(eligible[s].numel() <= smallest_kept for s in eligible if s not in seen)


# ----------------------------------------------------------------------------- pre-LLM stage
@given(layout=layouts(batch=1), data=st.data())
@property_settings(150)
def test_temporal_merge_drops_exactly_the_tokens_like_the_previous_frame(
    layout: VisualLayout, data: st.DataObject
) -> None:
    frame_ids = layout.frame_ids[0]
    n = frame_ids.numel()
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    embeds = _random_hidden(data.draw(st.sampled_from(HIDDEN_KINDS), label="kind"), 1, n, 6, gen, torch.float32)[0]
    if data.draw(st.booleans(), label="static patches"):  # copy some tokens from the previous same-size frame
        ids = frame_ids.tolist()
        for i in range(n):
            j = i - ids.count(ids[i])  # the same spatial token one frame earlier, if the frames are equal
            if j >= 0 and torch.rand(1, generator=gen).item() < 0.5:
                embeds[i] = embeds[j]
    threshold = data.draw(st.sampled_from([0.9, 1.0, -1.0]) | st.floats(-1.0, 1.0), label="threshold")
    keep = temporal_merge_keep(embeds, frame_ids, threshold)
    assert keep.shape == (n,) and keep.dtype == torch.bool
    # reference: frame by frame, compare with the same index of the previous frame when sizes agree
    _, sizes = torch.unique_consecutive(frame_ids, return_counts=True)
    unit = F.normalize(embeds, dim=-1)
    expected, start, previous = [], 0, None
    for size in sizes.tolist():
        for i in range(size):
            if previous is not None and previous[1] == size:
                similarity = float(unit[start + i] @ unit[previous[0] + i])
                if abs(similarity - threshold) < 1e-6:
                    expected.append(bool(keep[start + i]))  # on the threshold: rounding decides
                else:
                    expected.append(similarity <= threshold)
            else:
                expected.append(True)
        previous, start = (start, size), start + size
    assert keep.tolist() == expected
    assert bool(keep[: int(sizes[0])].all()), "the first frame is always kept"
