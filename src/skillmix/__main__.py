"""`python -m skillmix` (also `accelerate launch -m skillmix ...` and `torchrun -m skillmix ...`)."""
import sys

from .cli import main

sys.exit(main())
