r"""The paper's grids (`sweeps/*.yaml`) as Hydra multiruns of train.py: list them, show their jobs,
launch them.

    python scripts/sweep.py list
    python scripts/sweep.py show olmoe_commonsense    # one line per job: composes + validates, loads no model
    python scripts/sweep.py status olmoe_commonsense  # finished / failed / started / pending per job
    python scripts/sweep.py run toy                   # local: Hydra's basic launcher, one job after another
    python scripts/sweep.py run toy --jobs 2          # local, two jobs at once (CPU; one thread each)
    python scripts/sweep.py run olmoe_math --launcher slurm --partition gpu --timeout-min 1440
    python scripts/sweep.py run olmoe_commonsense --launcher gpus --gpus 0,1,2,3,4,5,6,7
    python scripts/sweep.py run mixtral_math --launcher gpus --gpus 0,1,2,3,4,5,6,7 --gpus-per-job 4 \
        deepspeed=zero3

The grid model, its checks and the launchers live in perft_exp/sweeps/ (its docstring tells the sweep file
format, the run directories and the launchers); this is its command line.
"""

import sys

from perft_exp.sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main())
