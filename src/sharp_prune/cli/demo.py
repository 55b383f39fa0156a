"""`sharp-prune demo`: SmolLM2-135M-Instruct answers a question over a long "video" of captions,
with and without pruning, through the generic adapter.

Each frame of the video is a caption; its tokens are that frame's visual tokens. The demo prints each
method's answer, the visual tokens it kept and its prefill time, all measured in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import PruneConfig
from ..engine.handle import apply
from ..measure.timing import median_seconds

SCENES = [
    "A woman in a yellow raincoat waits at a bus stop while rain falls on the street.",
    "Two children fly a red kite on a windy green hill under a grey sky.",
    "A fisherman pulls a silver fish from a calm blue lake at sunrise.",
    "A chef slices orange carrots on a wooden board in a busy kitchen.",
    "A black cat sleeps on a warm windowsill next to a pot of basil.",
    "A cyclist in a white helmet rides across an old stone bridge.",
]
QUESTION = "What does the chef slice in the kitchen?"
FRAMES_PER_SCENE = 4


@dataclass
class DemoPrompt:
    input_ids: torch.Tensor  # [1, L]
    frame_map: torch.Tensor  # [1, L], frame index of caption tokens, -1 for text


def build_prompt(tokenizer, scenes: list[str] = SCENES, question: str = QUESTION) -> DemoPrompt:
    """Chat prompt: an intro, then every frame's caption (the visual tokens), then the question."""
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Here are the captions of a video, frame by frame.\n"}],
        tokenize=False,
    ).rsplit("<|im_end|>", 1)[0]
    tail = f"\nQuestion: {question} Answer in a few words.<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    frame_map = [-1] * len(ids)
    frame = 0
    for scene in scenes:
        for _ in range(FRAMES_PER_SCENE):
            caption = tokenizer(f"Frame {frame}: {scene}\n", add_special_tokens=False)["input_ids"]
            ids += caption
            frame_map += [frame] * len(caption)
            frame += 1
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids += tail_ids
    frame_map += [-1] * len(tail_ids)
    return DemoPrompt(torch.tensor([ids]), torch.tensor([frame_map]))


def _answer(model, tokenizer, prompt: DemoPrompt) -> tuple[str, float]:
    with torch.no_grad():
        # one warm-up, then the median of three
        prefill = median_seconds(lambda: model(input_ids=prompt.input_ids, logits_to_keep=1), "cpu", repeats=3)
        out = model.generate(input_ids=prompt.input_ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, prompt.input_ids.shape[1] :], skip_special_tokens=True)
    return text.strip().splitlines()[0] if text.strip() else "", prefill


def run_demo(retention: float = 0.3, layer: int = 2) -> list[dict]:
    """Answer the demo question unpruned and with each baseline; print and return the rows."""
    from ..config import check_layer
    from ..smollm2 import load_smollm2, smollm2_config

    check_layer(layer, smollm2_config().num_hidden_layers, "SmolLM2-135M")  # before the weights load
    model, tokenizer = load_smollm2()
    prompt = build_prompt(tokenizer)
    n_visual = int((prompt.frame_map >= 0).sum())
    print(
        f"SmolLM2-135M-Instruct, {prompt.input_ids.shape[1]} tokens, {n_visual} of them 'visual' "
        f"({n_visual // (len(SCENES) * FRAMES_PER_SCENE)} per frame on average)"
    )
    print(f"Question: {QUESTION}\n")
    rows = []
    answer, prefill = _answer(model, tokenizer, prompt)
    rows.append({"method": "unpruned", "kept": n_visual, "prefill_s": prefill, "answer": answer})
    for method in ("sharp", "fastv", "feather", "divprune", "uniform", "random"):
        handle = apply(model, PruneConfig(method=method, retention=retention, layer=layer))
        try:
            with handle.visual_frames(prompt.frame_map):
                answer, prefill = _answer(model, tokenizer, prompt)
        finally:
            handle.remove()
        rows.append({"method": method, "kept": handle.last.budget[0], "prefill_s": prefill, "answer": answer})
    width = max(len(r["method"]) for r in rows)
    print(f"{'method':<{width}}  kept  prefill   answer")
    for r in rows:
        print(f"{r['method']:<{width}}  {r['kept']:>4}  {r['prefill_s'] * 1000:5.0f} ms  {r['answer']}")
    print(f"\nretention={retention}, layer K={layer}; prefill = median of 3 forwards after a warm-up, measured here.")
    return rows
