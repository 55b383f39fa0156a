"""lmms-eval plugin: the models register through the entry point, read their pruning config from model_args,
refuse bad arguments before loading weights, and run lmms-eval's own `generate_until` on synthetic video
requests with a tiny random LLaVA-OneVision checkpoint, writing one statistics row per request."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("av")

import sharp_prune as sp  # noqa: E402
from sharp_prune.integrations.lmms_eval import MODELS, split_model_args  # noqa: E402
from sharp_prune.testing import synthetic_video, tiny_llava_onevision_checkpoint  # noqa: E402

FRAMES = 8
TOKENS_PER_FRAME = 16  # tiny LLaVA-OV: 32 x 32 frames, patch 4, pooled to 4 x 4


@pytest.fixture(scope="module")
def registry():
    from lmms_eval.models import MODEL_REGISTRY_V2

    return MODEL_REGISTRY_V2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_llava_onevision_checkpoint(tmp_path_factory.mktemp("tiny-llava-ov"))


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("videos")
    lengths = [36, 20, 12]
    return [
        {"video": str(synthetic_video(folder / f"v{i}.mp4", num_frames=n)), "question": f"What happens in clip {i}?"}
        for i, n in enumerate(lengths)
    ]


def _requests(docs: list[dict], chat: bool) -> list:
    from lmms_eval.api.instance import Instance

    def to_visual(doc):
        return [doc["video"]]

    def to_messages(doc):
        content = [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["question"]}]
        return [{"role": "user", "content": content}]

    gen_kwargs = {"max_new_tokens": 4, "until": ["\n"]}
    requests = []
    for i, doc in enumerate(docs):
        if chat:
            args = (doc["question"], to_messages, dict(gen_kwargs), i, "synthetic", "test")
        else:
            args = (doc["question"], dict(gen_kwargs), to_visual, i, "synthetic", "test")
        requests.append(
            Instance("generate_until", args, idx=0, metadata={"task": "synthetic", "doc_id": i, "repeats": 1})
        )
    return requests


def _load(registry, name: str, args: str, chat: bool = True):
    cls = registry.get_model_class(name, force_simple=not chat)
    return cls.create_from_arg_string(args, {"device": "cpu", "batch_size": 1})


def _texts(outputs: list) -> list[str]:
    return [o if isinstance(o, str) else o.text for o in outputs]


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- registration
def test_entry_point_registers_the_three_models_as_subclasses_of_upstream(registry):
    from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaHfChat
    from lmms_eval.models.simple.llava_hf import LlavaHf
    from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
    from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

    assert set(MODELS) <= set(registry.list_model_names())
    upstream = {
        ("sharp_llava_onevision", True): LlavaHf,
        ("sharp_llava_onevision", False): LlavaHfChat,
        ("sharp_qwen2_vl", True): Qwen2_VL,
        ("sharp_qwen2_5_vl", True): Qwen2_5_VL,
    }
    for (name, simple), base in upstream.items():
        cls = registry.get_model_class(name, force_simple=simple)
        assert issubclass(cls, base)
        assert cls.is_simple is simple
    # like upstream llava_hf and qwen2_5_vl, the chat class is the default; qwen2_vl has only a simple one
    assert registry.resolve("sharp_llava_onevision").model_type == "chat"
    assert registry.resolve("sharp_qwen2_vl").model_type == "simple"


def test_every_family_wrapper_subclasses_the_upstream_class_it_names(registry):
    """Each family's `LmmsWrapper` (Gemma 4's included, which is not run end to end here) resolves to a subclass
    of the upstream simple / chat class it names, importable from the installed lmms-eval."""
    import importlib

    from sharp_prune.models import lmms_wrappers

    for name, (_, wrapper) in lmms_wrappers().items():
        for simple, path in ((True, wrapper.simple), (False, wrapper.chat)):
            if path is None:
                continue
            module, cls_name = path.split(":")
            base = getattr(importlib.import_module(module), cls_name)
            assert issubclass(registry.get_model_class(name, force_simple=simple), base), (name, path)


# ---------------------------------------------------------------------------------------------- model_args
def test_model_args_split_into_config_plugin_options_and_upstream_args(tmp_path):
    from lmms_eval.models.simple.llava_hf import LlavaHf

    kwargs = {
        "pretrained": "some/model",
        "max_frames_num": 32,
        "method": "sharp",
        "retention": 0.1,
        "layer": "3",  # strings as a Python caller might pass them
        "segm": "false",
        "regd_registers": "none",
        "prune_log": str(tmp_path),
        "prune_timing": False,
    }
    config, options, rest = split_model_args(kwargs, upstream=LlavaHf)
    assert config == sp.PruneConfig(method="sharp", retention=0.1, layer=3, segm=False, regd_registers=None)
    assert options.log_dir == tmp_path and options.timing is False
    assert rest == {"pretrained": "some/model", "max_frames_num": 32}
    # defaults: ShaRP at r = 0.2, K = 2
    config, _, _ = split_model_args({})
    assert (config.method, config.retention, config.layer) == ("sharp", 0.2, 2)
    # another method's fields: accepted with a deprecation, and ignored
    with pytest.warns(DeprecationWarning, match=r"\['segm', 'regd_registers'\] belong to method\(s\) \['sharp'\]"):
        config, _, _ = split_model_args({**kwargs, "method": "fastv"}, upstream=LlavaHf)
    assert config == sp.PruneConfig(method="fastv", retention=0.1, layer=3)


def test_model_args_typos_and_bad_values_are_named(tmp_path):
    from lmms_eval.models.simple.llava_hf import LlavaHf

    with pytest.raises(sp.ConfigError, match=r"'retension' \(did you mean 'retention'\?\)"):
        split_model_args({"retension": 0.2}, upstream=LlavaHf)
    with pytest.raises(sp.ConfigError, match="outside"):
        split_model_args({"retention": 1.5})
    with pytest.raises(sp.ConfigError, match="unknown"):
        split_model_args({"method": "fastest"})
    with pytest.raises(sp.ConfigTypeError, match="true or false"):
        split_model_args({"posc": "maybe"})


def test_model_args_an_upstream_passes_on_to_its_parent_are_its_own():
    """lmms-eval's qwen3_5 takes a few arguments and hands the rest (`**kwargs`) to qwen3_vl's constructor, which
    takes the device, attention and batch size: those are accepted; a typo is still named."""
    from lmms_eval.models.chat.qwen3_5 import Qwen3_5

    kwargs = {"pretrained": "x", "device_map": "cpu", "batch_size": 1, "enable_thinking": False, "retention": 0.1}
    _, _, rest = split_model_args(kwargs, upstream=Qwen3_5)
    assert rest == {"pretrained": "x", "device_map": "cpu", "batch_size": 1, "enable_thinking": False}
    with pytest.raises(sp.ConfigError, match=r"'devce_map' \(did you mean 'device_map'\?\)"):
        split_model_args({"devce_map": "cpu"}, upstream=Qwen3_5)


def _config_only(checkpoint, tmp_path):
    """A copy of the checkpoint without weights: a wrapper that got past its checks would fail loading them."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(checkpoint / "config.json", folder / "config.json")
    return folder


def test_bad_layer_and_wrong_model_fail_before_the_weights_load(registry, checkpoint, tmp_path):
    folder = _config_only(checkpoint, tmp_path)
    with pytest.raises(sp.ConfigError, match=r"layer K=9 is outside \[1, 3\]"):
        _load(registry, "sharp_llava_onevision", f"pretrained={folder},layer=9,prune_log={tmp_path}")
    with pytest.raises(sp.UnsupportedModelError, match="'llava_onevision' checkpoint"):
        _load(registry, "sharp_qwen2_vl", f"pretrained={folder},prune_log={tmp_path}")
    with pytest.raises(sp.ConfigError, match="did you mean 'max_frames_num'"):
        _load(registry, "sharp_llava_onevision", f"pretrained={folder},max_frames=8,prune_log={tmp_path}")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "simple"])
def test_generate_until_prunes_and_logs_one_row_per_request(registry, checkpoint, docs, tmp_path, chat):
    log = tmp_path / "logs"
    args = f"pretrained={checkpoint},method=sharp,retention=0.25,layer=2,max_frames_num={FRAMES},prune_log={log}"
    lm = _load(registry, "sharp_llava_onevision", args, chat=chat)
    assert lm.prune_handle.active and lm.prune_config.method == "sharp"
    lm.task_dict = {"synthetic": {"test": docs}}
    outputs = lm.generate_until(_requests(docs, chat))
    assert len(outputs) == len(docs) and all(isinstance(t, str) and t for t in _texts(outputs))

    rows = _rows(lm.prune_stats.samples_path)
    assert sorted(r["doc_id"] for r in rows) == list(range(len(docs)))
    n = FRAMES * TOKENS_PER_FRAME
    for row in rows:
        assert row["error"] is None and row["task"] == "synthetic" and row["split"] == "test"
        assert row["visual_tokens"] == n
        assert row["kept_visual_tokens"] == lm.prune_config.budget(n) == n // 4
        assert row["kept_len"] == row["seq_len"] - n + n // 4
        assert row["prefill_s"] > 0
        assert row["prefill_flops"] > 0 and row["unpruned_prefill_flops"] > 0
    summary = json.loads(lm.prune_stats.summary_path.read_text())
    assert summary["requests"] == summary["with_video"] == len(docs) and summary["failed"] == 0
    assert summary["mean_kept_visual_tokens"] == n // 4
    assert summary["config"] == lm.prune_config.to_dict()
    assert summary["samples_file"] == lm.prune_stats.samples_path.name
    assert summary["per_task"]["synthetic"]["requests"] == len(docs)
    total = sum(r["prefill_flops"] for r in rows) / 1e12
    assert summary["prefill_tflops"] == pytest.approx(total)


def test_method_none_answers_as_the_unpruned_model_and_counts_the_same_flops(registry, checkpoint, docs, tmp_path):
    """method=none keeps every token: the answers equal those of the same wrapper with pruning removed, and its
    FLOPs equal the unpruned FLOPs that a pruning run reports for the same requests."""
    base = f"pretrained={checkpoint},layer=1,max_frames_num={FRAMES}"
    lm = _load(registry, "sharp_llava_onevision", f"{base},method=none,prune_log={tmp_path / 'none'}")
    lm.task_dict = {"synthetic": {"test": docs}}
    kept_all = _texts(lm.generate_until(_requests(docs, chat=True)))
    none_rows = {r["doc_id"]: r for r in _rows(lm.prune_stats.samples_path)}
    lm.prune_handle.remove()
    unpruned = _texts(lm.generate_until(_requests(docs, chat=True)))
    assert kept_all == unpruned
    assert all(r["kept_visual_tokens"] == r["visual_tokens"] for r in none_rows.values())

    pruned = _load(registry, "sharp_llava_onevision", f"{base},method=fastv,retention=0.1,prune_log={tmp_path / 'fv'}")
    pruned.task_dict = {"synthetic": {"test": docs}}
    pruned.generate_until(_requests(docs, chat=True))
    for row in _rows(pruned.prune_stats.samples_path):
        reference = none_rows[row["doc_id"]]
        assert row["unpruned_prefill_flops"] == reference["prefill_flops"] == reference["unpruned_prefill_flops"]
        assert row["prefill_flops"] < 0.5 * row["unpruned_prefill_flops"]


def test_a_failed_generation_is_counted_not_hidden(registry, checkpoint, docs, tmp_path):
    """Upstream wrappers catch generation errors, log them and answer ""; the statistics keep a row saying no
    prefill ran, and the summary counts it."""
    args = f"pretrained={checkpoint},max_frames_num={FRAMES},prune_log={tmp_path}"
    lm = _load(registry, "sharp_llava_onevision", args)
    lm.task_dict = {"synthetic": {"test": docs}}
    requests = _requests(docs, chat=True)
    requests[0].arguments[2]["num_beams"] = 0  # generate() rejects it before the prefill
    outputs = _texts(lm.generate_until(requests))
    assert outputs[0] == "" and all(outputs[1:])
    rows = {r["doc_id"]: r for r in _rows(lm.prune_stats.samples_path)}
    assert rows[0]["error"] == "no prefill ran" and rows[0]["prefill_s"] is None
    assert all(rows[i]["error"] is None for i in range(1, len(docs)))
    summary = json.loads(lm.prune_stats.summary_path.read_text())
    assert summary["failed"] == 1 and summary["with_video"] == len(docs) - 1


def test_loglikelihood_is_refused_with_a_reason(registry, checkpoint, tmp_path):
    lm = _load(registry, "sharp_llava_onevision", f"pretrained={checkpoint},prune_log={tmp_path}", chat=False)
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        lm.loglikelihood([])
