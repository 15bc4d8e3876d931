"""`python -m perft_exp.models.arch`: the support table of every MoE family
transformers ships, computed live."""

from perft_exp.models.arch.support import main

main()
