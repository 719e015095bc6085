"""Entry points; the scripts at the repository root are thin wrappers around ``cli()`` here."""
