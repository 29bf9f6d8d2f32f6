"""Recipes: each source paper's evaluation as one study template and its table layout.

``xray-audit init RECIPE [DIR] [--demo]`` writes the study TOML and RECIPE.md
(:mod:`audit.cli.init`); ``xray-audit report RUN --layout RECIPE`` writes the paper's table
(:mod:`reports.layouts`). The recipes are listed in :mod:`audit.recipes.registry`.
"""
