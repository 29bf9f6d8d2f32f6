"""Image-quality metrics for generated X-rays."""
