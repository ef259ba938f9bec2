"""`python -m protege.cli`: the same as the `protege` command."""

from protege.cli import main

main()
