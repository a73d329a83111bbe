"""``python -m kvpress_lab.cli``: the ``kvpress-lab`` command."""

from kvpress_lab.cli import main

raise SystemExit(main())
