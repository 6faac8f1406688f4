"""``python -m r2f.cli``."""

from r2f.cli.main import main

main()
