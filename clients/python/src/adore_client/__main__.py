"""python -m adore_client: the `adore` CLI."""
import sys

from .cli import main

sys.exit(main())
