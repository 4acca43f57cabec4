import sys

from chronotick_mcp.server import main

sys.exit(main())
