"""``python -m flexmtl`` (e.g. ``torchrun --nproc_per_node=N -m flexmtl run ...``)."""

import sys

from flexmtl.cli import main

sys.exit(main())
