"""Blinded radiologist reader study over a run directory. Built in a later issue."""
