import sys

from lensjax.cli import main

sys.exit(main())
