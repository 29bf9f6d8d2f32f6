"""Streamlit review dashboard over a run directory (never imports torch). Built in a later issue."""
