import sys

from chronotickd.sim.cli import main

sys.exit(main())
