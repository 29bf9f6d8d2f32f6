"""Golden outputs of the demo run; see tests/test_golden_outputs.py."""
