"""Every built-in recipe, listed once: ``xray-audit init`` and ``report --layout`` look names up here."""

from __future__ import annotations

from audit.recipes import canine_hip, fracatlas, knee, nodule, xreal
from audit.recipes.base import Recipe

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        fracatlas.RECIPE,
        nodule.RECIPE,
        xreal.RECIPE,
        knee.RECIPE,
        canine_hip.RECIPE,
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name``; a KeyError lists the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known recipes are {', '.join(RECIPES)}") from None
