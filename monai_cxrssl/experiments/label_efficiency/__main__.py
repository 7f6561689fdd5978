"""``python -m monai_cxrssl.experiments.label_efficiency``: the study's command line (:mod:`.cli`)."""

import sys

from monai_cxrssl.experiments.label_efficiency.cli import main

sys.exit(main())
