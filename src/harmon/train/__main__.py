import sys

from harmon.train.cli import main

sys.exit(main())
