#!/usr/bin/env python
"""Thin wrapper: see lbyl_pl/cli/report.py (run with --help)."""
from lbyl_pl.cli.report import cli

if __name__ == "__main__":
    raise SystemExit(cli())
