"""Functions of the `sharp_video_qa` lmms-eval task (see sharp_video_qa.yaml): one video and one question per
document, scored by exact match of the first word."""

from __future__ import annotations

from pathlib import Path


def doc_to_visual(doc: dict) -> list[str]:
    """The document's video file, as a path lmms-eval's video wrappers read with their own decoder."""
    if not doc.get("video"):
        return []
    return [str(Path(doc["video"]).resolve())]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return f"{doc['question']}\nAnswer with one word."


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    """The chat form: the video first, then the question (lmms-eval's chat wrappers)."""
    content = [{"type": "video", "url": video} for video in doc_to_visual(doc)]
    content.append({"type": "text", "text": doc_to_text(doc)})
    return [{"role": "user", "content": content}]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def process_results(doc: dict, results: list[str]) -> dict:
    words = results[0].strip().split()
    answer = words[0].strip(".,!?").lower() if words else ""
    return {"exact_match": float(answer == doc["answer"].lower())}
