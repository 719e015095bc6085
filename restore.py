#!/usr/bin/env python
"""Thin wrapper: see lbyl_pl/cli/restore.py (run with --help)."""
from lbyl_pl.cli.restore import cli

if __name__ == "__main__":
    raise SystemExit(cli())
