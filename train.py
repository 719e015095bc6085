#!/usr/bin/env python
"""Thin wrapper: see lbyl_pl/cli/train.py (run with --help)."""
from lbyl_pl.cli.train import cli

if __name__ == "__main__":
    raise SystemExit(cli())
