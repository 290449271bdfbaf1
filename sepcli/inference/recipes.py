"""Chunking recipes: how a track is cut into the chunks a model sees, and blended back.

A model archive names its recipe (``metadata.recipe``, one of
:data:`sepcli.dsp.CHUNKING_RECIPES`); :func:`make_recipe` turns the archive's
metadata and the user's :class:`~sepcli.inference.config.SeparatorConfig` into
a :class:`~sepcli.inference.engine.Recipe`, whose ``engine(fn, ...)`` gives the
streaming engine (:class:`~sepcli.inference.engine.ChunkStream`). The separator
runs every model (and every member of an ensemble) through its own recipe, so a
bag can mix families whose published chunking differs.

* ``overlap-add`` — sepcli's own (:mod:`sepcli.inference.chunking`);
* ``demucs`` — Demucs' ``apply_model`` (:mod:`sepcli.inference.demucs_recipe`);
* ``mdxc`` — audio-separator's MDXC ``demix`` (:mod:`sepcli.inference.mdxc_recipe`);
* ``msst`` — Music-Source-Separation-Training's generic ``demix``
  (:mod:`sepcli.inference.msst_recipe`).

Lengths here are in samples at the model's rate.
"""

from __future__ import annotations

from collections.abc import Callable

from sepcli.errors import UsageError
from sepcli.inference.chunking import MAX_SHIFT_SECONDS, OverlapAddRecipe
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.engine import ChunkEngine, ModelFn, Recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "ChunkEngine",
    "ModelFn",
    "Recipe",
    "OverlapAddRecipe",
    "RECIPES",
    "register_recipe",
    "make_recipe",
    "reference_num_overlap",
    "MAX_SHIFT_SECONDS",
]


#: recipe name -> ``from_metadata(meta, config)`` factory.
RECIPES: dict[str, Callable[[ArchiveMetadata, SeparatorConfig], Recipe]] = {
    OverlapAddRecipe.name: OverlapAddRecipe.from_metadata,
}


def register_recipe(
    name: str, factory: Callable[[ArchiveMetadata, SeparatorConfig], Recipe]
) -> None:
    """Add a recipe (its module calls this on import; see :func:`make_recipe`)."""
    RECIPES[name] = factory


def reference_num_overlap(config: SeparatorConfig, recipe: str, num_overlap: int) -> int:
    """``num_overlap`` for a recipe that reproduces a reference's chunks, with the
    user's ``--overlap f`` as ``round(1 / (1 - f))`` (0.75 -> 4). Such a recipe
    takes no ``--shifts`` or ``--context`` (:class:`UsageError`)."""
    if config.shifts:
        raise UsageError(f"--shifts is not part of the {recipe} chunking recipe; use --shifts 0")
    if config.context_seconds is not None:
        raise UsageError(f"--context is not part of the {recipe} chunking recipe")
    if config.overlap is None:
        return num_overlap
    return max(1, round(1.0 / (1.0 - config.overlap)))


#: recipes whose code lives in their own module, imported on first use.
_RECIPE_MODULES: dict[str, str] = {
    "demucs": "sepcli.inference.demucs_recipe",
    "mdxc": "sepcli.inference.mdxc_recipe",
    "msst": "sepcli.inference.msst_recipe",
}


def make_recipe(meta: ArchiveMetadata, config: SeparatorConfig) -> Recipe:
    """The recipe ``meta.recipe`` with the archive's recommendations and ``config``'s overrides."""
    if meta.recipe not in RECIPES and meta.recipe in _RECIPE_MODULES:
        import importlib

        importlib.import_module(_RECIPE_MODULES[meta.recipe])
    factory = RECIPES.get(meta.recipe)
    if factory is None:
        raise UsageError(f"model {meta.name!r} asks for chunking recipe {meta.recipe!r}, "
                         f"which this sepcli does not have")  # fmt: skip
    return factory(meta, config)
