"""``python -m pipeline.finetune TRAIN_INPUT --out CKPT ...`` (same as ``dfer finetune``; also works under
``accelerate launch -m pipeline.finetune ...`` for several GPUs)."""

import sys

from pipeline.finetune.cli import main

sys.exit(main())
