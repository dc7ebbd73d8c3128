"""``python -m benchmarks.study``: the study's command line (see ``benchmarks.study.cli``)."""

import sys

from benchmarks.study.cli import main

sys.exit(main())
