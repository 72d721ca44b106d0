import sys

from discograd.cli import main

sys.exit(main())
