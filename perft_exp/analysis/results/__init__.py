"""The results report of a set of finished runs: one job per module.

runs.py     the runs below a directory, read through perft_exp/run_dir.py: results of any format version
            (older ones get what they lack from their records), the base model's rows, failed and corrupt
            run directories; runs that differ only by seed merged into one row with bootstrap intervals
tables.py   results.csv (one row per run) and results.md (the paper's table, the skill table)
figures.py  the efficiency and bottleneck figures (PNG)
report.py   write_report: all of the above into one directory (scripts/collect_results.py)
"""
