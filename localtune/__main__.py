"""`python -m localtune` is the `localtune` command."""

from localtune.cli import main

main()
