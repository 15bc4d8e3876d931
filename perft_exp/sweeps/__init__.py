"""The paper's grids (`sweeps/*.yaml`) as Hydra multiruns of train.py: what a grid is, its jobs,
their launchers.

Run them with `python scripts/sweep.py list | show | status | run` (its docstring has the commands).

  grid.py    a sweep file and the jobs of a multirun command line (Hydra's public override parser; the
             expansion is the Cartesian product of the swept keys, as Hydra's basic sweeper makes it)
  jobs.py    each job composed, validated and checked against its run directory before anything launches
  launch.py  the three launchers: Hydra's basic launcher, Slurm through hydra-submitit-launcher, a GPU pool
  cli.py     the `scripts/sweep.py` commands: list, show, status, run

A sweep file has `fixed` (overrides shared by every job) and `blocks`: each block maps override keys to a
value or a list of values and stands for the Cartesian product of its lists; the grid is the union of the
blocks. An optional `env` mapping is set in the environment of the launched train.py processes. Non-Cartesian
parts of a grid are named presets (`routing=n8k2` is conf/routing/n8k2.yaml, R's (N, K) pair). `key=value`
arguments after the sweep name are appended to every job (last value wins).

Each job runs in outputs/runs/<task>/<model>/<name> (relative to the current directory), a name that
depends only on the config: relaunching skips finished jobs and resumes interrupted ones from their newest
checkpoint; a failing job leaves its failure record there and the others go on (perft_exp/run_dir.py). Every
job's run directory is checked against its config before anything launches, as train.py checks it (state
`conflict`: it holds another config's run), and `run` refuses a grid whose data directory is missing.
`show` and `status` without overrides look at the jobs of the sweep's last `run` (its overrides are kept
in outputs/sweeps/<sweep>.json).

Launchers:
  local  `python train.py -m <block>` per block, Hydra's basic launcher (sequential).
  slurm  the same with hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml, hydra-submitit-launcher): one
         array task per job; this process waits for the array, so start it in tmux on the login node.
         `--slurm-local`: the same plugin with submitit_local (local processes, no sbatch), for tests.
  gpus   one job per GPU (or per --gpus-per-job GPUs, through torchrun) on this node: a small pool of workers,
         each pinning CUDA_VISIBLE_DEVICES and running `python train.py <job>`; logs in <run>/launcher.log.
"""
