"""``python -m kvpress_lab.integrations.lm_eval ARGS``: lm-eval's command line, with the ``kvpress-lab`` model type."""

from kvpress_lab.integrations.lm_eval import main

main()
