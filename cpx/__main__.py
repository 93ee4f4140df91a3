import sys

from cpx.cli import main

sys.exit(main())
