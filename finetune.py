#!/usr/bin/env python
"""Thin wrapper: see lbyl_pl/cli/finetune.py (run with --help)."""
from lbyl_pl.cli.finetune import cli

if __name__ == "__main__":
    raise SystemExit(cli())
