"""Bridges to other tools. Each module needs its tool installed (an optional extra) and is imported explicitly.

* :mod:`kvpress_lab.integrations.lm_eval`: an lm-evaluation-harness model type, ``kvpress-lab``
  (extra ``eval``: ``pip install "kvpress-lab[eval]"``, lm-eval 0.4.13 or a later 0.4).
"""
