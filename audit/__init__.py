"""xray-audit: evaluation and clinical-realism auditing for generative X-ray models."""

__version__ = "0.1.0"
