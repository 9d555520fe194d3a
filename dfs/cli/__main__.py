import sys

from dfs.cli.main import main

sys.exit(main())
