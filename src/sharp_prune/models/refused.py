"""Video LLM families sharp-prune refuses, each with its reason and the nearest family it does prune.

`resolve_adapter` raises `UnsupportedModelError` with this text for these classes at `apply`, before anything is
attached, instead of the generic "not supported" (or, worse, a generic-adapter run that would ignore what makes the
family different). The README's model table lists them (tests/test_model_table.py checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why a family is refused.

    Attributes:
        family: the family's name (its transformers model type).
        class_names: its model classes.
        reason: what the engine would have to do that it does not.
        nearest: the nearest family sharp-prune does prune.
    """

    family: str
    class_names: tuple[str, ...]
    reason: str
    nearest: str

    def message(self, class_name: str) -> str:
        return (
            f"{class_name} ({self.family}) is not supported by sharp-prune: {self.reason}. The nearest supported "
            f"family is {self.nearest}."
        )


REFUSED: tuple[Refusal, ...] = ()


def refusal_for(class_name: str) -> Refusal | None:
    """The refusal of this model class, or None."""
    for refusal in REFUSED:
        if class_name in refusal.class_names:
            return refusal
    return None
