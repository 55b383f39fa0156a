"""The captioned-video task: a real LM answers a question about one scene of a long "video".

Each frame of the video is a fixed-length run of caption tokens, which the pruner treats as that
frame's visual tokens. A video has S scenes of equal length; every frame of a scene repeats the
scene's caption with small variations, followed by background text shared by the whole video
(redundancy, as in real video). One scene is the *needle*: the question names two of its attributes
and asks for the third. Distractor scenes share one attribute with the needle, so that the question
can only be answered from the needle scene. The answer is scored by the log-likelihood of each
candidate word after an assistant prefix, so an item costs one prefill (a candidate of several tokens
continues from its cache: `answers.answer_log_likelihoods`).

Everything is seeded: `make_items(n, split="test")` always returns the same items, and the
"validation" split uses disjoint seeds (tune on it, report on "test").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from .answers import answer_log_likelihoods

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown")
OBJECTS = ("car", "dog", "cat", "bike", "boat", "kite", "horse", "bird", "truck", "train", "ball", "duck", "cow", "bus")
PLACES = ("street", "beach", "kitchen", "park", "river", "forest", "garden", "station", "market", "bridge", "field")
# Each frame states the scene three ways, in a per-frame order (small variations across frames). The
# questions' assistant prefixes end where one of these verbatim patterns puts the answer word, so the
# answer can be copied from the needle scene: "In the {place}, the {colour} {object}", "The {object}
# in the {place} is {colour}", "The {colour} {object} is in the {place}".
SENTENCES = (
    "In the {place}, the {colour} {object} waits.",
    "The {object} in the {place} is {colour}.",
    "The {colour} {object} is in the {place}.",
)
BACKGROUND = (
    " The light is soft.",
    " The camera is still.",
    " It is a quiet day.",
    " The sky is clear.",
    " Nothing else moves.",
)
QUESTION_TYPES = ("colour", "object", "place")
# "after" (which object comes right after a named scene) is opt-in: SmolLM2-135M is near chance on it.
ALL_QUESTION_TYPES = (*QUESTION_TYPES, "after")
SPLIT_SEEDS = {"validation": 10_000, "test": 20_000}


@dataclass(frozen=True)
class Scene:
    colour: str
    object: str
    place: str


@dataclass(frozen=True)
class TaskConfig:
    """Shape of the generated videos (defaults: 64 frames x 32 tokens = 2,048 visual tokens).

    Attributes:
        frames, tokens_per_frame: the video's size.
        scenes: scenes per video, in order; each holds a contiguous run of frames.
        choices: candidate answers per question.
        question_types: the kinds of question, cycled over the items.
        distractors: two other scenes share one attribute each with the needle.
        needle_frames: None: every scene spans an equal share of the frames. k: the needle scene spans exactly k
            frames (the answer is stated there only) and the other scenes share the rest.
    """

    frames: int = 64
    tokens_per_frame: int = 32
    scenes: int = 4
    choices: int = 3
    question_types: tuple[str, ...] = QUESTION_TYPES
    distractors: bool = False
    needle_frames: int | None = None


# The task's variants (`sharp-prune bench --task`). Each was validated unpruned on its validation seeds before
# any test seed was run (docs/benchmarks.md says what each reaches).
VARIANTS: dict[str, TaskConfig] = {
    # every frame of a scene repeats its caption: keeping a little of every scene is enough
    "redundant": TaskConfig(),
    # twice the scenes and one more choice: each scene is 1/8 of the video
    "many-scenes": TaskConfig(scenes=8, choices=4),
    # the answer is stated in one frame of 43 (48 tokens, room for the whole caption); the other 42 frames are
    # seven other scenes
    "needle": TaskConfig(frames=43, tokens_per_frame=48, scenes=8, choices=4, needle_frames=1),
}


@dataclass
class Item:
    """One question over one video, tokenised and ready for the model.

    Attributes:
        input_ids: [1, L] prompt: chat header, the frames, the question, the assistant prefix.
        frame_map: [1, L] frame index of each visual token, -1 for text.
        candidates: candidate answer words; `candidate_ids` the token ids of each (one or more).
        answer: index of the correct candidate.
        needle_scene: index of the scene the question is about; `needle_positions` the sequence
            positions of its frames' tokens and `answer_positions` those of the answer word in them.
    """

    seed: int
    question_type: str
    scenes: list[Scene]
    needle_scene: int
    question: str
    prefix: str
    candidates: list[str]
    answer: int
    input_ids: torch.Tensor
    frame_map: torch.Tensor
    candidate_ids: list[list[int]]
    needle_positions: torch.Tensor = field(repr=False)
    answer_positions: torch.Tensor = field(repr=False)

    @property
    def num_visual(self) -> int:
        return int((self.frame_map >= 0).sum())


def _pick_scenes(rng: random.Random, count: int, unique: bool) -> list[Scene]:
    """Scenes whose attribute pairs are unique (every pair names one scene); with `unique`, every
    single attribute is unique in the video."""
    if unique:
        return [
            Scene(c, o, p)
            for c, o, p in zip(
                rng.sample(COLOURS, count), rng.sample(OBJECTS, count), rng.sample(PLACES, count), strict=True
            )
        ]
    scenes: list[Scene] = []
    while len(scenes) < count:
        candidate = Scene(rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(PLACES))
        if _pick_ok(scenes, candidate):
            scenes.append(candidate)
    return scenes


def _add_distractors(rng: random.Random, scenes: list[Scene], needle: int) -> None:
    """Let two other scenes share one attribute each with the needle (same object; same place)."""
    target = scenes[needle]
    others = [i for i in range(len(scenes)) if i != needle]
    rng.shuffle(others)
    for index, shared in zip(others[:2], ("object", "place"), strict=False):
        for _ in range(50):
            changed = Scene(
                rng.choice([c for c in COLOURS if c != target.colour]),
                target.object if shared == "object" else rng.choice([o for o in OBJECTS if o != target.object]),
                target.place if shared == "place" else rng.choice([p for p in PLACES if p != target.place]),
            )
            rest = [s for i, s in enumerate(scenes) if i != index]
            if _pick_ok(rest, changed):
                scenes[index] = changed
                break


def _pick_ok(scenes: list[Scene], candidate: Scene) -> bool:
    return not any(
        (s.colour, s.object) == (candidate.colour, candidate.object)
        or (s.colour, s.place) == (candidate.colour, candidate.place)
        or (s.object, s.place) == (candidate.object, candidate.place)
        for s in scenes
    )


def _question(rng: random.Random, kind: str, needle: Scene, scenes: list[Scene], choices: int, previous: Scene | None):
    """Question, assistant prefix, candidate words and the answer's index."""
    pools = {"colour": COLOURS, "object": OBJECTS, "place": PLACES, "after": OBJECTS}
    attribute = "object" if kind == "after" else kind
    correct = getattr(needle, attribute)
    # Prefer distractor answers that occur in the video, so a wrong scene gives a plausible answer.
    in_video = [getattr(s, attribute) for s in scenes if getattr(s, attribute) != correct]
    others = list(dict.fromkeys(in_video))
    rng.shuffle(others)
    rest = [w for w in pools[kind] if w != correct and w not in others]
    rng.shuffle(rest)
    candidates = [correct, *(others + rest)[: choices - 1]]
    rng.shuffle(candidates)
    # The prefix ends where a caption's verbatim pattern puts the answer word.
    if kind == "colour":
        question = f"What colour is the {needle.object} in the {needle.place}?"
        prefix = f"In the {needle.place}, the"
    elif kind == "after":  # temporal order: the scene right after `previous`
        question = f"What thing comes right after the {previous.colour} {previous.object}?"
        prefix = f"Right after the {previous.colour} {previous.object} comes the"
    elif kind == "object":
        question = f"What is the {needle.colour} thing in the {needle.place}?"
        prefix = f"In the {needle.place}, the {needle.colour}"
    else:
        question = f"Where is the {needle.colour} {needle.object}?"
        prefix = f"The {needle.colour} {needle.object} is in the"
    return question, prefix, candidates, candidates.index(correct)


def _frame_tokens(tokenizer, text: str, background: list[int], length: int) -> list[int]:
    """Caption tokens, then background tokens, cut or cycled to exactly `length` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    filler = background * (length // max(1, len(background)) + 2)
    return (ids + filler)[:length] if len(ids) < length else ids[:length]


def describe(config: TaskConfig) -> str:
    """One line: the task's shape."""
    needle = (
        f"the needle in {config.needle_frames} frame(s)"
        if config.needle_frames
        else "every scene an equal share of the frames"
    )
    return (
        f"{config.frames} frames x {config.tokens_per_frame} tokens, {config.scenes} scenes ({needle}), "
        f"{config.choices} choices"
    )


def frame_scenes(config: TaskConfig, needle: int) -> list[int]:
    """The scene of each frame: contiguous runs in scene order (see `TaskConfig.needle_frames`)."""
    if config.needle_frames is None:
        per_scene = config.frames // config.scenes
        return [frame // per_scene for frame in range(config.frames)]
    rest = config.frames - config.needle_frames
    others = config.scenes - 1
    runs = [rest // others + (1 if i < rest % others else 0) for i in range(others)] if others else []
    runs.insert(needle, config.needle_frames)
    return [scene for scene, run in enumerate(runs) for _ in range(run)]


def check_task(config: TaskConfig) -> None:
    """`ValueError` when the frames cannot be laid out as the config asks."""
    if config.needle_frames is None:
        if config.frames % config.scenes:
            raise ValueError(f"{config.frames} frames do not split into {config.scenes} equal scenes.")
    elif not 1 <= config.needle_frames <= config.frames - (config.scenes - 1):
        raise ValueError(
            f"needle_frames={config.needle_frames} leaves no frame for each of the other {config.scenes - 1} scenes "
            f"of {config.frames} frames."
        )


def prompt_frame(tokenizer, question: str, prefix: str) -> tuple[list[int], str]:
    """The token ids before the frames and the text after them. A ChatML model (SmolLM2-Instruct) gets a user turn
    and an assistant turn that starts with `prefix`; any other (a base model) gets plain text after its BOS token:
    "Captions of the frames of a video:", the frames, "Question: ...", "Answer: {prefix}"."""
    intro = "Captions of the frames of a video:\n"
    if "<|im_end|>" in (getattr(tokenizer, "chat_template", None) or ""):  # ChatML (SmolLM2, Qwen)
        head = tokenizer.apply_chat_template([{"role": "user", "content": intro}], tokenize=False)
        head = head.rsplit("<|im_end|>", 1)[0]
        tail = f"\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n{prefix}"
        return tokenizer(head, add_special_tokens=False)["input_ids"], tail
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(intro, add_special_tokens=False)["input_ids"], f"\nQuestion: {question}\nAnswer: {prefix}"


def make_item(tokenizer, seed: int, config: TaskConfig = TaskConfig()) -> Item:
    """Build one item deterministically from `seed`."""
    rng = random.Random(seed)
    check_task(config)
    scenes = _pick_scenes(rng, config.scenes, unique=not config.distractors)
    needle = rng.randrange(config.scenes)
    if config.distractors:
        _add_distractors(rng, scenes, needle)
    kind = config.question_types[seed % len(config.question_types)]
    if kind not in ALL_QUESTION_TYPES:
        raise ValueError(f"unknown question type {kind!r}; choose from {ALL_QUESTION_TYPES}.")
    if kind == "after" and needle == 0:
        needle = rng.randrange(1, config.scenes)  # the needle needs a scene before it
    previous = scenes[needle - 1] if needle else None
    question, prefix, candidates, answer = _question(rng, kind, scenes[needle], scenes, config.choices, previous)

    head_ids, tail = prompt_frame(tokenizer, question, prefix)
    background = tokenizer("".join(rng.sample(BACKGROUND, 3)), add_special_tokens=False)["input_ids"]

    ids = list(head_ids)
    frame_map = [-1] * len(ids)
    needle_positions: list[int] = []
    answer_positions: list[int] = []
    attribute = "object" if kind == "after" else kind
    answer_token = tokenizer(" " + getattr(scenes[needle], attribute), add_special_tokens=False)["input_ids"]
    for frame, scene_index in enumerate(frame_scenes(config, needle)):
        scene = scenes[scene_index]
        order = rng.sample(SENTENCES, len(SENTENCES))
        caption = "\n" + " ".join(t.format(colour=scene.colour, object=scene.object, place=scene.place) for t in order)
        tokens = _frame_tokens(tokenizer, caption, background, config.tokens_per_frame)
        start = len(ids)
        ids += tokens
        frame_map += [frame] * len(tokens)
        if scene_index == needle:
            needle_positions += range(start, start + len(tokens))
            answer_positions += [start + i for i, t in enumerate(tokens) if t in answer_token]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    ids += tail_ids
    frame_map += [-1] * len(tail_ids)

    candidate_ids = [tokenizer(" " + word, add_special_tokens=False)["input_ids"] for word in candidates]
    return Item(
        seed=seed,
        question_type=kind,
        scenes=scenes,
        needle_scene=needle,
        question=question,
        prefix=prefix,
        candidates=candidates,
        answer=answer,
        input_ids=torch.tensor([ids]),
        frame_map=torch.tensor([frame_map]),
        candidate_ids=candidate_ids,
        needle_positions=torch.tensor(needle_positions),
        answer_positions=torch.tensor(answer_positions),
    )


def make_items(tokenizer, count: int, split: str = "test", config: TaskConfig = TaskConfig()) -> list[Item]:
    """`count` items of a split ("validation" or "test"); the two use disjoint seeds."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}.")
    return [make_item(tokenizer, SPLIT_SEEDS[split] + i, config) for i in range(count)]


def candidate_log_probs(model, item: Item) -> torch.Tensor:
    """Log-probabilities of the candidates as answers, renormalised over the candidates: one prefill of the prompt,
    candidates of several tokens continuing from its cache (`answers.answer_log_likelihoods`)."""
    return torch.log_softmax(answer_log_likelihoods(model, item.input_ids, item.candidate_ids), dim=-1)
