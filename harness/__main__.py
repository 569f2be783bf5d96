import sys

from cathouse_harness.cli.commands import main

sys.exit(main())
