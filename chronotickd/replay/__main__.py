import sys

from chronotickd.replay.cli import main

sys.exit(main())
