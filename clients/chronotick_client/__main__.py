import sys

from chronotick_client.cli import main

sys.exit(main())
