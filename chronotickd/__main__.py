import sys

from chronotickd.daemon import main

sys.exit(main())
