"""lmms-eval as its users run it: `python -m lmms_eval` in a subprocess, on a task in lmms-eval's own format
(`tests/lmms_task`, loaded with `--include_path`), with a tiny LLaVA-OneVision checkpoint; on one process and
on two (`torch.distributed.run`, as `accelerate launch` does on GPUs).

lmms-eval logs many errors and exits 0, so these tests read the files it writes, not its exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("av")

from gemma4_release import requires_gemma4  # noqa: E402

import sharp_prune as sp  # noqa: E402
from sharp_prune.testing import (  # noqa: E402
    synthetic_video,
    tiny_gemma4_checkpoint,
    tiny_internvl_checkpoint,
    tiny_llava_onevision_checkpoint,
    tiny_qwen_vl_checkpoint,
)

TESTS = Path(__file__).resolve().parent
TASK = "sharp_video_qa"
FRAMES = 8
TOKENS_PER_FRAME = 16  # tiny LLaVA-OV: 32 x 32 frames, patch 4, pooled to 4 x 4
DOCS = 5
UPSTREAM = ("llava_hf", "qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the task's data.jsonl (DOCS synthetic videos) and a tiny checkpoint."""
    folder = tmp_path_factory.mktemp("lmms")
    tiny_llava_onevision_checkpoint(folder / "ckpt")
    for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        tiny_qwen_vl_checkpoint(folder / family, family)
    rows = []
    for i in range(DOCS):
        video = synthetic_video(folder / f"v{i}.mp4", num_frames=12 + 6 * i)
        rows.append({"id": i, "video": str(video), "question": f"What moves in clip {i}?", "answer": "squares"})
    _write_jsonl(folder / "data.jsonl", rows)
    return folder


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _lmms(
    workdir: Path,
    out: str,
    model_args: str,
    processes: int = 1,
    model: str = "sharp_llava_onevision",
    base_args: str | None = None,
) -> dict:
    """Run lmms-eval's command line in `workdir`; returns its results, samples, log and the prune log folder.
    `base_args` (default: the tiny LLaVA-OV checkpoint, FRAMES frames, on CPU) come before `model_args`."""
    if base_args is None:
        base_args = f"pretrained={workdir / 'ckpt'},max_frames_num={FRAMES},device_map=cpu"
    args = [
        "--model",
        model,
        "--model_args",
        f"{base_args},{model_args}".rstrip(","),
        "--tasks",
        TASK,
        "--include_path",
        str(TESTS / "lmms_task"),
        "--batch_size",
        "1",
        "--output_path",
        str(workdir / out),
        "--log_samples",
    ]
    if model in UPSTREAM:  # upstream llava_hf takes its device from --device only (sharp-prune's: from device_map)
        command = [sys.executable, str(TESTS / "lmms_upstream.py"), *args, "--device", "cpu"]
    elif processes == 1:
        command = [sys.executable, "-m", "lmms_eval", *args]
    else:
        run = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [sys.executable, *run, "-m", "lmms_eval", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    log = done.stdout + done.stderr
    results = sorted((workdir / out).rglob("*_results.json"))
    samples = sorted((workdir / out).rglob(f"*_samples_{TASK}.jsonl"))
    assert results and samples, f"lmms-eval wrote no results:\n{log[-4000:]}"
    return {
        "log": log,
        "results": json.loads(results[-1].read_text()),
        "answers": {row["doc_id"]: row["filtered_resps"] for row in _read_jsonl(samples[-1])},
        "prune": workdir / out / "prune",
    }


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _prune_rows(folder: Path, pattern: str) -> list[dict]:
    return [row for path in sorted(folder.glob(pattern)) for row in _read_jsonl(path)]


@pytest.fixture(scope="module")
def sharp_run(workdir: Path) -> dict:
    return _lmms(workdir, "sharp", f"method=sharp,retention=0.2,layer=2,prune_log={workdir / 'sharp' / 'prune'}")


def test_the_cli_evaluates_a_pruned_model_on_a_local_task(sharp_run):
    results = sharp_run["results"]["results"][TASK]
    assert "exact_match,none" in results and 0.0 <= results["exact_match,none"] <= 1.0
    assert sorted(sharp_run["answers"]) == list(range(DOCS))
    rows = _prune_rows(sharp_run["prune"], "*_rank0of1_samples.jsonl")
    assert sorted(row["doc_id"] for row in rows) == list(range(DOCS)), "one statistics row per document"
    budget = sp.PruneConfig(method="sharp", retention=0.2).budget(FRAMES * TOKENS_PER_FRAME)
    for row in rows:
        assert row["task"] == TASK and row["error"] is None
        assert row["visual_tokens"] == FRAMES * TOKENS_PER_FRAME and row["kept_visual_tokens"] == budget
    summary = json.loads(next(sharp_run["prune"].glob("*_rank0of1_summary.json")).read_text())
    assert summary["requests"] == DOCS and summary["failed"] == 0 and summary["config"]["method"] == "sharp"


def test_method_none_answers_as_the_upstream_model(workdir):
    pruned = _lmms(workdir, "none", f"method=none,prune_log={workdir / 'none' / 'prune'}")
    upstream = _lmms(workdir, "upstream", "", model="llava_hf")
    assert pruned["answers"] == upstream["answers"] and len(upstream["answers"]) == DOCS
    rows = _prune_rows(pruned["prune"], "*_samples.jsonl")
    assert len(rows) == DOCS and all(r["kept_visual_tokens"] == r["visual_tokens"] == 128 for r in rows)


def test_two_processes_answer_as_one_and_merge_their_logs(workdir, sharp_run):
    prune = workdir / "two" / "prune"
    two = _lmms(workdir, "two", f"method=sharp,retention=0.2,layer=2,prune_log={prune}", processes=2)
    assert two["answers"] == sharp_run["answers"], "two processes must give every document the same answer"
    assert two["results"]["results"][TASK] == sharp_run["results"]["results"][TASK]
    rank_files = sorted(p.name for p in prune.glob("*_rank*_samples.jsonl"))
    assert [name.split("_rank")[1] for name in rank_files] == ["0of2_samples.jsonl", "1of2_samples.jsonl"]
    assert len({name.split("_")[0] for name in rank_files}) == 1, "both ranks share one run id"
    per_rank = [_read_jsonl(prune / name) for name in rank_files]
    assert all(per_rank), "each rank answered documents"
    doc_ids = sorted(row["doc_id"] for rows in per_rank for row in rows)
    assert doc_ids == list(range(DOCS)), "no document lost or counted twice (lmms-eval's padding is not a row)"
    merged = [p for p in prune.glob("*_summary.json") if "_rank" not in p.name]
    assert len(merged) == 1
    summary = json.loads(merged[0].read_text())
    assert summary["requests"] == DOCS and len(summary["ranks"]) == 2
    merged_rows = _read_jsonl(prune / summary["samples_file"])
    assert sorted(r["doc_id"] for r in merged_rows) == list(range(DOCS))


def test_bad_documents_fail_alone_with_their_reason(workdir, tmp_path):
    """No video, a missing file, a video shorter than max_frames_num: logged, counted, and the run goes on."""
    short = synthetic_video(tmp_path / "short.mp4", num_frames=FRAMES - 3)
    rows = [
        {"id": 0, "video": str(workdir / "v0.mp4"), "question": "What moves?", "answer": "squares"},
        {"id": 1, "video": "", "question": "Nothing to see?", "answer": "no"},
        {"id": 2, "video": str(tmp_path / "missing.mp4"), "question": "What moves?", "answer": "squares"},
        {"id": 3, "video": str(short), "question": "What moves?", "answer": "squares"},
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_jsonl(bad / "data.jsonl", rows)
    (bad / "ckpt").symlink_to(workdir / "ckpt")
    run = _lmms(bad, "out", f"method=sharp,retention=0.2,layer=2,prune_log={bad / 'out' / 'prune'}")
    assert sorted(run["answers"]) == [0, 1, 2, 3], "every document was answered (a failed one with '')"
    assert run["answers"][2] in ([""], "", [[""]])
    log = run["log"]
    assert "has no video tokens" in log and "video file not found" in log and "fewer than max_frames_num" in log
    by_doc = {row["doc_id"]: row for row in _prune_rows(run["prune"], "*_rank0of1_samples.jsonl")}
    assert sorted(by_doc) == [0, 1, 2, 3]
    assert by_doc[0]["error"] is None and by_doc[0]["warning"] is None
    assert "no video" in by_doc[1]["error"] and "not found" in by_doc[2]["error"]
    assert by_doc[3]["error"] is None and "fewer than max_frames_num" in by_doc[3]["warning"]
    assert by_doc[3]["visual_tokens"] == (FRAMES - 3) * TOKENS_PER_FRAME
    summary = json.loads(next(run["prune"].glob("*_rank0of1_summary.json")).read_text())
    assert (summary["requests"], summary["failed"], summary["warnings"]) == (4, 2, 1)


def test_an_unknown_model_arg_stops_the_run_before_loading_with_the_nearest_name(workdir):
    args = f"pretrained={workdir / 'ckpt'},retension=0.2"
    command = [sys.executable, "-m", "lmms_eval", "--model", "sharp_llava_onevision", "--model_args", args]
    command += ["--tasks", TASK, "--include_path", str(TESTS / "lmms_task"), "--output_path", str(workdir / "typo")]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=240)
    log = done.stdout + done.stderr
    assert "unknown model_args 'retension' (did you mean 'retention'?)" in log
    assert not list((workdir / "typo").rglob("*_results.json"))


# ------------------------------------------------------------------------------------------------- Qwen-VL
# The tiny Qwen checkpoints: patch 4, merge 2, temporal patch 2. With min_pixels = max_pixels = 56 * 56, the
# 64 x 48 videos become 56 x 56 frames (qwen-vl-utils: multiples of 28 nearest to 48 and 64), so every pair of
# frames is (56 / 4 / 2)^2 = 49 tokens.
QWEN_PIXELS = "min_pixels=3136,max_pixels=3136,max_num_frames=8,device_map=cpu"
QWEN_TOKENS_PER_FRAME_PAIR = 49
VIDEO_FRAMES = [12 + 6 * i for i in range(DOCS)]  # the workdir videos, 10 fps


def _qwen_frames(model: str, total: int) -> int:
    """Frames the upstream Qwen wrapper reads, by qwen-vl-utils' rules: the simple wrappers ask 2 frames per
    second, at least 4, an even count; the chat wrapper asks min(max_num_frames, total), an even count."""
    if model == "chat":
        return min(8, total) // 2 * 2
    return min(max(total / 10 * 2, 4), total // 2 * 2) // 2 * 2


@pytest.mark.parametrize(
    "model, family, kind",
    [("sharp_qwen2_vl", "qwen2_vl", "simple"), ("sharp_qwen2_5_vl", "qwen2_5_vl", "chat")],
)
def test_the_cli_evaluates_pruned_qwen_models(workdir, model, family, kind):
    """Qwen2-VL (simple wrapper) and Qwen2.5-VL (chat wrapper, lmms-eval's default for it) through the CLI,
    without torchvision here: sharp-prune's torch-only video processor and video reading stand in."""
    prune = workdir / model / "prune"
    base = f"pretrained={workdir / family},{QWEN_PIXELS}"
    run = _lmms(workdir, model, f"method=sharp,retention=0.2,layer=2,prune_log={prune}", model=model, base_args=base)
    assert "exact_match,none" in run["results"]["results"][TASK]
    assert sorted(run["answers"]) == list(range(DOCS))
    rows = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert sorted(rows) == list(range(DOCS)), "one statistics row per document"
    for doc, total in enumerate(VIDEO_FRAMES):
        visual = _qwen_frames(kind, total) // 2 * QWEN_TOKENS_PER_FRAME_PAIR
        row = rows[doc]
        assert row["error"] is None, row
        assert row["visual_tokens"] == visual
        assert row["kept_visual_tokens"] == sp.PruneConfig(method="sharp", retention=0.2).budget(visual)


def test_qwen_method_none_answers_as_the_upstream_model(workdir):
    base = f"pretrained={workdir / 'qwen2_vl'},{QWEN_PIXELS}"
    log = f"method=none,prune_log={workdir / 'qwen-none' / 'prune'}"
    pruned = _lmms(workdir, "qwen-none", log, model="sharp_qwen2_vl", base_args=base)
    upstream = _lmms(workdir, "qwen-upstream", "", model="qwen2_vl", base_args=base)
    assert pruned["answers"] == upstream["answers"] and len(upstream["answers"]) == DOCS


def test_bad_qwen_documents_fail_alone(workdir, tmp_path):
    """Upstream's Qwen wrappers drop an unreadable video silently (qwen2_vl) or stop the run (qwen2_5_vl): the
    pruned ones answer "" for that document, log why, count it failed, and go on."""
    one_frame = synthetic_video(tmp_path / "one.mp4", num_frames=1)
    rows = [
        {"id": 0, "video": str(workdir / "v0.mp4"), "question": "What moves?", "answer": "squares"},
        {"id": 1, "video": str(tmp_path / "missing.mp4"), "question": "What moves?", "answer": "squares"},
        {"id": 2, "video": str(one_frame), "question": "What moves?", "answer": "squares"},
        {"id": 3, "video": "", "question": "Nothing to see?", "answer": "no"},
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_jsonl(bad / "data.jsonl", rows)
    base = f"pretrained={workdir / 'qwen2_vl'},{QWEN_PIXELS}"
    prune = bad / "out" / "prune"
    args = f"method=sharp,retention=0.2,layer=2,prune_log={prune}"
    run = _lmms(bad, "out", args, model="sharp_qwen2_vl", base_args=base)
    assert sorted(run["answers"]) == [0, 1, 2, 3]
    assert run["answers"][1] in ([""], "", [[""]]) and run["answers"][2] in ([""], "", [[""]])
    assert "video file not found" in run["log"] and "at least 2" in run["log"]
    by_doc = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert by_doc[0]["error"] is None and by_doc[0]["visual_tokens"] == 2 * QWEN_TOKENS_PER_FRAME_PAIR
    assert "not found" in by_doc[1]["error"] and "at least 2" in by_doc[2]["error"]
    assert "no video" in by_doc[3]["error"]
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert (summary["requests"], summary["failed"]) == (4, 3)


# ------------------------------------------------------------------------------------------------ Qwen3-VL
# Upstream's qwen3_vl wrappers read videos through qwen-vl-utils with image_patch_size=16 (Qwen3-VL's patch), so
# frames are resized to multiples of 32: with min_pixels = max_pixels = 64 * 64 the 64 x 48 videos become 64 x 64
# frames, (64 / 4 / 2)^2 = 64 tokens per temporal patch of the tiny checkpoint (patch 4, merge 2). The chat wrapper
# asks max_num_frames frames of every video (a shorter video fails its document, as with qwen-vl-utils): 8 here.
QWEN3_ARGS = "min_pixels=4096,max_pixels=4096,max_num_frames=8,device_map=cpu"
QWEN3_TOKENS_PER_FRAME_PAIR = 64


def test_the_cli_evaluates_a_pruned_qwen3_vl(workdir):
    """Qwen3-VL through lmms-eval's default (chat) wrapper, without torchvision here: sharp-prune's torch-only
    Qwen3-VL video processor and qwen-vl-utils' video rules on PyAV stand in; the processor writes each temporal
    patch's timestamp from the frame indices those rules sampled."""
    prune = workdir / "qwen3" / "prune"
    base = f"pretrained={workdir / 'qwen3_vl'},{QWEN3_ARGS}"
    args = f"method=sharp,retention=0.2,layer=2,prune_log={prune}"
    run = _lmms(workdir, "qwen3", args, model="sharp_qwen3_vl", base_args=base)
    assert "exact_match,none" in run["results"]["results"][TASK]
    assert sorted(run["answers"]) == list(range(DOCS))
    rows = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert sorted(rows) == list(range(DOCS)), "one statistics row per document"
    visual = 8 // 2 * QWEN3_TOKENS_PER_FRAME_PAIR
    for doc in range(DOCS):
        row = rows[doc]
        assert row["error"] is None, row
        assert row["visual_tokens"] == visual
        assert row["kept_visual_tokens"] == sp.PruneConfig(method="sharp", retention=0.2).budget(visual)
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert summary["requests"] == DOCS and summary["failed"] == 0 and summary["model"] == "sharp_qwen3_vl"


# ------------------------------------------------------------------------------------------------- Qwen3.5
# lmms-eval's default for sharp_qwen3_5 is the chat wrapper (chat/qwen3_5.py: Qwen3-VL's chat `generate_until` on
# the simple qwen3_5's defaults). Those defaults set total_pixels, so each video is read by qwen-vl-utils' fps rule
# (2 frames a second, at least 4, at most max_num_frames, an even count), not max_num_frames of every video: the
# 12..36-frame clips (10 fps) give 4, 4, 4, 6, 6 frames, each pair 64 x 64 pixels (min_pixels = 64 * 64; max_pixels
# is not passed on when total_pixels is set) = 64 tokens. enable_thinking defaults to True there, and the answer is
# what follows "</think>": "" when the (here 4) new tokens end before it, so the test turns thinking off.
QWEN3_5_ARGS = "min_pixels=4096,max_pixels=4096,max_num_frames=8,enable_thinking=false,device_map=cpu"


def test_the_cli_evaluates_a_pruned_qwen3_5(workdir):
    """Qwen3.5 (hybrid text stack: full attention at layers 0 and 2, linear at 1 and 3, so K = 2 is legal) through
    lmms-eval's default (chat) wrapper, without torchvision here, as Qwen3-VL's test."""
    prune = workdir / "qwen3_5" / "prune"
    base = f"pretrained={workdir / 'qwen3_5'},{QWEN3_5_ARGS}"
    args = f"method=sharp,retention=0.2,layer=2,prune_log={prune}"
    run = _lmms(workdir, "qwen3_5_run", args, model="sharp_qwen3_5", base_args=base)
    assert "exact_match,none" in run["results"]["results"][TASK]
    assert sorted(run["answers"]) == list(range(DOCS))
    assert all(a not in ("", [""], [[""]]) for a in run["answers"].values()), "thinking off: the model's words"
    rows = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert sorted(rows) == list(range(DOCS)), "one statistics row per document"
    for doc, total in enumerate(VIDEO_FRAMES):
        frames = min(max(total / 10 * 2, 4), 8, total) // 2 * 2
        visual = int(frames) // 2 * QWEN3_TOKENS_PER_FRAME_PAIR
        row = rows[doc]
        assert row["error"] is None, row
        assert row["visual_tokens"] == visual
        assert row["kept_visual_tokens"] == sp.PruneConfig(method="sharp", retention=0.2).budget(visual)
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert summary["requests"] == DOCS and summary["failed"] == 0 and summary["model"] == "sharp_qwen3_5"


# ------------------------------------------------------------------------------------------------ InternVL
# Upstream's internvl_hf (chat only) hands the video files to the processor with do_sample_frames=True and
# num_frames; transformers would decode them with torchcodec, sharp-prune decodes the frames the video processor
# samples with PyAV. Every frame is one tile: 32 x 32 pixels, patch 4, pixel shuffle 0.5 = 16 tokens.
INTERNVL_FRAMES = 8
INTERNVL_TOKENS_PER_FRAME = 16


@pytest.fixture(scope="module")
def internvl_checkpoint(workdir: Path) -> Path:
    return tiny_internvl_checkpoint(workdir / "internvl")


def test_the_cli_evaluates_a_pruned_internvl(workdir, internvl_checkpoint):
    """InternVL through lmms-eval's internvl_hf (chat). It catches every exception of `generate` and answers "", so
    a document that failed would still be answered: the prune log's rows show that each one ran, pruned."""
    prune = workdir / "internvl_run" / "prune"
    base = f"pretrained={internvl_checkpoint},num_frames={INTERNVL_FRAMES},device_map=cpu"
    args = f"method=sharp,retention=0.2,layer=2,prune_log={prune}"
    run = _lmms(workdir, "internvl_run", args, model="sharp_internvl", base_args=base)
    assert "in generating" not in run["log"], "upstream swallowed an error of generate"
    assert "exact_match,none" in run["results"]["results"][TASK]
    assert sorted(run["answers"]) == list(range(DOCS))
    rows = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert sorted(rows) == list(range(DOCS)), "one statistics row per document"
    visual = INTERNVL_FRAMES * INTERNVL_TOKENS_PER_FRAME
    for doc in range(DOCS):
        row = rows[doc]
        assert row["error"] is None and row["warning"] is None, row
        assert row["visual_tokens"] == visual
        assert row["kept_visual_tokens"] == sp.PruneConfig(method="sharp", retention=0.2).budget(visual)
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert summary["requests"] == DOCS and summary["failed"] == 0 and summary["model"] == "sharp_internvl"


def test_bad_internvl_documents_fail_alone(workdir, internvl_checkpoint, tmp_path):
    """A missing file fails its document alone (it is read before upstream's try around `generate`, which would
    answer "" and log nothing in the prune log); a video shorter than num_frames gives all its frames, with a
    warning (transformers' InternVL video processor would refuse to sample it)."""
    short = synthetic_video(tmp_path / "short.mp4", num_frames=INTERNVL_FRAMES - 3)
    rows = [
        {"id": 0, "video": str(workdir / "v0.mp4"), "question": "What moves?", "answer": "squares"},
        {"id": 1, "video": str(tmp_path / "missing.mp4"), "question": "What moves?", "answer": "squares"},
        {"id": 2, "video": str(short), "question": "What moves?", "answer": "squares"},
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_jsonl(bad / "data.jsonl", rows)
    prune = bad / "out" / "prune"
    base = f"pretrained={internvl_checkpoint},num_frames={INTERNVL_FRAMES},device_map=cpu"
    args = f"method=sharp,retention=0.2,layer=2,prune_log={prune}"
    run = _lmms(bad, "out", args, model="sharp_internvl", base_args=base)
    assert sorted(run["answers"]) == [0, 1, 2] and run["answers"][1] in ([""], "", [[""]])
    assert "video file not found" in run["log"] and "fewer than num_frames" in run["log"]
    by_doc = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert by_doc[0]["error"] is None and by_doc[0]["visual_tokens"] == INTERNVL_FRAMES * INTERNVL_TOKENS_PER_FRAME
    assert "not found" in by_doc[1]["error"]
    assert by_doc[2]["error"] is None and "fewer than num_frames" in by_doc[2]["warning"]
    assert by_doc[2]["visual_tokens"] == (INTERNVL_FRAMES - 3) * INTERNVL_TOKENS_PER_FRAME
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert (summary["requests"], summary["failed"], summary["warnings"]) == (3, 1, 1)


# ------------------------------------------------------------------------------------------------- Gemma 4
# Upstream's simple gemma4 wrapper hands the video files to the processor's `apply_chat_template`, with num_frames =
# max_num_frames and its own frame sampling (evenly from the first frame to the last); transformers would decode them
# with torchcodec, sharp-prune decodes those frames with PyAV and passes their indices and rate (the processor writes
# each frame's mm:ss from them). max_soft_tokens=70 (upstream's default is 280): the tiny checkpoint (4 layers; patch
# 4, pooling 2) makes a 64 x 48 frame 72 x 56 pixels, 9 x 7 = 63 tokens, and a 48 x 48 frame 64 x 64 pixels, 8 x 8 = 64
# tokens. 6 layers, the last two sharing KV: upstream pads every prompt to a multiple of 8 tokens, so decoding runs a
# padded batch of one through them. lmms-eval answers with `generate`, which drops `video_position_ids` before the
# prefill: PosC (sharp's default) knows a frame's size only when it is square, so the 4:3 videos run without it
# (posc=false) and square videos with it; 4:3 videos with it fail each document alone, saying why.
GEMMA4_FRAMES = 8
GEMMA4_ARGS = f"max_num_frames={GEMMA4_FRAMES},max_soft_tokens=70,device_map=cpu"


@pytest.fixture(scope="module")
def gemma4_workdir(workdir: Path) -> Path:
    """The tiny Gemma 4 checkpoint, and a task folder of square copies of the workdir's videos."""
    folder = workdir / "gemma4"
    tiny_gemma4_checkpoint(folder / "ckpt", num_layers=6)
    rows = []
    for i, total in enumerate(VIDEO_FRAMES):
        video = synthetic_video(folder / f"square{i}.mp4", num_frames=total, width=48, height=48)
        rows.append({"id": i, "video": str(video), "question": f"What moves in clip {i}?", "answer": "squares"})
    _write_jsonl(folder / "data.jsonl", rows)
    return folder


@requires_gemma4
@pytest.mark.parametrize(
    ("videos", "posc", "tokens_per_frame"), [("square", True, 64), ("4:3", False, 63)], ids=["square", "4:3"]
)
def test_the_cli_evaluates_a_pruned_gemma4(workdir, gemma4_workdir, videos, posc, tokens_per_frame):
    """Gemma 4 through lmms-eval's simple gemma4 wrapper (its only one), without torchvision or torchcodec here."""
    folder = gemma4_workdir if videos == "square" else workdir
    out = f"gemma4_{'posc' if posc else 'no_posc'}"
    prune = folder / out / "prune"
    base = f"pretrained={gemma4_workdir / 'ckpt'},{GEMMA4_ARGS}"
    args = f"method=sharp,retention=0.2,layer=2,posc={str(posc).lower()},prune_log={prune}"
    run = _lmms(folder, out, args, model="sharp_gemma4", base_args=base)
    assert "exact_match,none" in run["results"]["results"][TASK]
    assert sorted(run["answers"]) == list(range(DOCS))
    assert all(a not in ("", [""], [[""]]) for a in run["answers"].values()), "untied weights answer in words"
    rows = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert sorted(rows) == list(range(DOCS)), "one statistics row per document"
    visual = GEMMA4_FRAMES * tokens_per_frame
    config = sp.PruneConfig(method="sharp", retention=0.2, posc=posc)
    for doc in range(DOCS):
        row = rows[doc]
        assert row["error"] is None and row["warning"] is None, row
        assert row["visual_tokens"] == visual and row["kept_visual_tokens"] == config.budget(visual)
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert summary["requests"] == DOCS and summary["failed"] == 0 and summary["model"] == "sharp_gemma4"
    assert summary["config"]["posc"] is posc
    # the FLOPs model counts Gemma 4's text stack (tests/test_flops_gemma4.py)
    assert "flops_not_counted" not in summary and summary["prefill_tflops"] > 0


@requires_gemma4
def test_gemma4_documents_posc_cannot_prune_fail_alone_saying_why(workdir, gemma4_workdir):
    """4:3 videos under PosC: the frame size is unknown under generate, so each document fails alone (answered "",
    its row says why) and the run goes on, instead of one refused input stopping the whole evaluation."""
    prune = workdir / "gemma4_posc_wide" / "prune"
    base = f"pretrained={gemma4_workdir / 'ckpt'},{GEMMA4_ARGS}"
    run = _lmms(
        workdir,
        "gemma4_posc_wide",
        f"method=sharp,retention=0.2,layer=2,prune_log={prune}",
        model="sharp_gemma4",
        base_args=base,
    )
    assert sorted(run["answers"]) == list(range(DOCS))
    assert all(a in ("", [""], [[""]]) for a in run["answers"].values())
    rows = {row["doc_id"]: row for row in _prune_rows(prune, "*_rank0of1_samples.jsonl")}
    assert sorted(rows) == list(range(DOCS)) and all("square aspect ratio" in row["error"] for row in rows.values())
    summary = json.loads(next(prune.glob("*_rank0of1_summary.json")).read_text())
    assert (summary["requests"], summary["failed"]) == (DOCS, DOCS)
