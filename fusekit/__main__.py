"""``python -m fusekit`` runs the command line."""
import sys

from fusekit.cli.main import main

sys.exit(main())
