"""Host-device syncs on the pruning path: every one a pruned forward makes is a listed one, with its reason.

On a CPU a sync costs nothing, so the rule is checked by counting the calls that would sync on a GPU
(`sharp_prune.measure.host_syncs`); `tests/test_cuda.py` checks the same forward under CUDA's sync debug mode.
"""

from __future__ import annotations

import pytest
import torch

import sharp_prune as sp
from sharp_prune.measure.host_syncs import PRUNING_PATH_SYNCS, count_host_syncs
from sharp_prune.steps.locate import VisualLayout
from sharp_prune.testing import TINY_FAMILIES, sample_of, tiny_causal_lm, tiny_inputs, tiny_model

METHODS = [(m, {}) for m in sp.available_methods() if m != "none"] + [
    ("sharp", {"posc_prior": "cached"}),
    ("sharp", {"segm": False}),
    ("sharp", {"regd_merge": False}),
]
ONCE = [site for site, why in PRUNING_PATH_SYNCS.items() if why.startswith("once:") or why.startswith("once (")]


def _pruned_forward_syncs(model, inputs, config) -> dict[str, int]:
    with sp.apply(model, config) as handle, torch.no_grad():
        model(**inputs)  # warm: blank frames, a cached prior
        with count_host_syncs() as syncs:
            model(**inputs)
        assert handle.last is not None and handle.last.kept_len < handle.last.seq_len
    return dict(syncs.sites())


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in TINY_FAMILIES}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(("method", "extra"), METHODS, ids=[f"{m}{sorted(e.items())}" for m, e in METHODS])
def test_every_sync_of_a_pruned_forward_is_a_listed_one(models, family, method, extra):
    model = models[family]
    batch = tiny_inputs(model, [3, 5], [4, 2])
    config = sp.PruneConfig(method=method, layer=2, retention=0.3, **extra)
    for inputs, samples in ((sample_of(batch, 0), 1), (batch, 2)):
        sites = _pruned_forward_syncs(model, inputs, config)
        unlisted = set(sites) - set(PRUNING_PATH_SYNCS)
        assert not unlisted, f"host syncs outside the list: { {s: sites[s] for s in unlisted} }"
        for site in ONCE:
            assert sites.get(site, 0) <= 1, f"{site} synced {sites[site]} times in one forward"
        # Per sample, at these sizes (N = 64 tokens, one block each): dedup's check (a second where duplicate
        # chains are long), the picks' block (a second when a pick leaves it), the registers (a second after a
        # shortfall). Before the device-side rewrite a ShaRP forward made over 300 here.
        per_sample = sum(sites.get(s, 0) for s in PRUNING_PATH_SYNCS if s not in ONCE)
        assert per_sample <= 6 * samples, sites
        assert sum(sites.values()) <= 6 + 6 * samples, sites


def test_the_generic_adapter_syncs_twice_before_selection():
    """A declared frame map, FastV: the locate step's two reads, nothing else."""
    model = tiny_causal_lm()
    ids = torch.randint(3, 200, (1, 40))
    handle = sp.apply(model, sp.PruneConfig(method="fastv", layer=2, retention=0.25))
    with handle.visual_frames(sp.frame_map_for_span(40, 4, 4, 8)), torch.no_grad():
        model(input_ids=ids)
        with count_host_syncs() as syncs:
            model(input_ids=ids)
    handle.remove()
    assert dict(syncs.sites()) == {"steps/locate.py:from_frame_map": 1, "steps/locate.py:locate": 1}


def test_the_counter_sees_the_package_calls_and_only_those():
    frame_map = torch.tensor([[-1, 0, 0, 1, 1, -1]])
    with count_host_syncs() as syncs:
        layout = VisualLayout.from_frame_map(frame_map)
        assert bool(layout.positions.sum() > 0)  # a sync here, in the test: not the package's
        layout.positions.to(frame_map.device)  # a move to the tensor's own device is no copy to the host
    assert syncs.calls == [("steps/locate.py:from_frame_map", "tolist")]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda t: t.item(), "item"),
        (lambda t: t.nonzero(), "nonzero"),
        (lambda t: t[t > 0], "__getitem__[bool mask]"),
        (lambda t: torch.unique(t), "unique"),
        (lambda t: int(t), "__int__"),
        (lambda t: t.to("cpu"), "to(cpu)"),
    ],
)
def test_the_counter_knows_each_kind_of_sync(call, name, monkeypatch):
    """Each kind is caught when package code makes it (a lambda compiled as if in the package)."""
    import sharp_prune.measure.host_syncs as host_syncs

    monkeypatch.setattr(host_syncs, "_caller_site", lambda: "here")
    with count_host_syncs() as syncs:
        call(torch.tensor([2]))
    assert name in [kind for _, kind in syncs.calls]
