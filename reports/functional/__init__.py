"""Statistics kernels for comparative reports: pure functions, no I/O, no torch.

``agreement`` holds reader agreement (ICC, weighted kappa, Krippendorff's alpha) and the visual
Turing test; ``paired`` holds model-vs-model tests, multiplicity correction and bootstrap intervals.
Import the submodules directly; this package imports nothing heavy on its own.
"""
