"""Options dicts over defaults, checked: one rule for the refit's and the budget's options (a leaf module)."""
from __future__ import annotations

__all__ = ["merged_options"]


def merged_options(options, defaults: dict, label: str) -> dict:
    """``options`` (a dict or ``None``) over ``defaults``; a non-dict or an unknown name raises ``ValueError``
    naming it and the allowed names (the refit's and the budget's options)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"{label} options must be a dict (keys: {', '.join(defaults)}), got {options!r}")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {label} option(s) {unknown}; allowed: {', '.join(defaults)}")
    return {**defaults, **options}
