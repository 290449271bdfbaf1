"""Which stems a model can give, and how derived stems are computed.

A model outputs its ``sources``; users may also ask for stems the model does not
output directly:

* ``accompaniment``: the sum of every source but vocals when the model outputs
  drums, bass, other and vocals (also guitar and piano for a six-source model,
  as Demucs' ``--two-stems`` does), otherwise ``mixture - vocals``;
* ``no_<source>``: the sum of every other source when the model's sources make up
  the whole mixture (it outputs drums, bass, other and vocals), otherwise
  ``mixture - <source>``.

With no stems asked for, a model gives every stem it makes
(:func:`default_stems`): its sources, and for a one-source model the rest of
the mixture too (``accompaniment`` beside ``vocals``, ``no_<source>`` beside
any other source), since a model that splits one source off splits the mixture
in two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sepcli.errors import UsageError

__all__ = ["ACCOMPANIMENT_RULES", "StemRecipe", "available_stems", "default_stems", "plan_stems"]

_FOUR = ("drums", "bass", "other", "vocals")


@dataclass(frozen=True)
class StemRecipe:
    """How to make one output stem from model sources (indices into ``sources``).

    ``kind`` is ``"source"`` (one source), ``"sum"`` (sum of sources) or
    ``"mix_minus"`` (mixture minus the sum of sources).
    """

    name: str
    kind: str
    indices: tuple[int, ...]


def _recipe(name: str, sources: Sequence[str], accompaniment: str = "auto") -> StemRecipe | None:
    if name in sources:
        return StemRecipe(name, "source", (sources.index(name),))
    complete = all(s in sources for s in _FOUR)
    if name == "accompaniment" and "vocals" in sources:
        if accompaniment != "mixture-minus-vocals" and complete:
            # every source but vocals: guitar and piano too for htdemucs_6s (Demucs --two-stems)
            return StemRecipe(name, "sum", tuple(i for i, s in enumerate(sources) if s != "vocals"))
        return StemRecipe(name, "mix_minus", (sources.index("vocals"),))
    if name.startswith("no_") and name[3:] in sources:
        target = name[3:]
        if complete and len(sources) > 1:
            return StemRecipe(name, "sum", tuple(i for i, s in enumerate(sources) if s != target))
        return StemRecipe(name, "mix_minus", (sources.index(target),))
    return None


def available_stems(sources: Sequence[str]) -> list[str]:
    """Every stem name :func:`plan_stems` accepts for a model with these sources."""
    names = list(sources)
    if "vocals" in sources and "accompaniment" not in sources:
        names.append("accompaniment")
    names += [f"no_{s}" for s in sources if f"no_{s}" not in names]
    return names


def default_stems(sources: Sequence[str]) -> list[str]:
    """The stems written when none are asked for: every source, plus the rest of
    the mixture for a one-source model (``["vocals", "accompaniment"]`` for a
    vocal model, ``["drums", "no_drums"]`` for a drum model)."""
    names = list(sources)
    if len(names) == 1:
        names.append("accompaniment" if names[0] == "vocals" else f"no_{names[0]}")
    return names


#: How ``accompaniment`` is made: ``auto`` (the sum of drums, bass and other when
#: the model outputs all three, else mixture - vocals) or ``mixture-minus-vocals``
#: (a bag whose vocals come from a stronger vocal model than its instruments).
ACCOMPANIMENT_RULES = ("auto", "mixture-minus-vocals")


def plan_stems(
    sources: Sequence[str], requested: Sequence[str] | None, accompaniment: str = "auto"
) -> list[StemRecipe]:
    """Recipes for the requested stems (``None``: :func:`default_stems`).

    ``accompaniment`` is one of :data:`ACCOMPANIMENT_RULES` (an archive's
    ``metadata.extra["accompaniment"]``).

    Raises:
        UsageError: a requested stem cannot be made from this model's sources.
    """
    sources = list(sources)
    if not requested:
        requested = default_stems(sources)
    recipes: list[StemRecipe] = []
    for name in requested:
        name = name.strip().lower()
        if not name:
            continue
        recipe = _recipe(name, sources, accompaniment)
        if recipe is None:
            raise UsageError(
                f"unknown stem {name!r} for a model with sources {', '.join(sources)}; "
                f"available: {', '.join(available_stems(sources))}"
            )
        if recipe not in recipes:
            recipes.append(recipe)
    if not recipes:
        raise UsageError("no stems requested")
    return recipes
