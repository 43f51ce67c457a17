"""`python -m cormorant ...` runs the CLI."""
import sys

from cormorant.cli import main

sys.exit(main())
