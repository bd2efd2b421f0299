"""`python -m bench`: the throughput report (see bench/cli.py)."""
from bench.cli import main

raise SystemExit(main())
