"""``python -m pipeline.cli ...`` is ``dfer ...`` (also under ``accelerate launch -m pipeline.cli finetune ...``)."""

import sys

from pipeline.cli import main

sys.exit(main())
