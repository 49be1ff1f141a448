import sys

from flows.cli.entry import main

sys.exit(main())
