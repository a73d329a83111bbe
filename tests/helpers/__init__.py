"""Shared test helpers: importable code used by the tests, never collected as tests itself.

``pyproject.toml`` puts ``tests/`` on ``sys.path`` for pytest (``[tool.pytest.ini_options]
pythonpath = ["tests"]``), so test files, conftests and the modules here import these as
``from helpers.<module> import <name>``, e.g. ``from helpers.tiny_models import tiny_model``.
A subprocess does not inherit pytest's ``pythonpath``: pass ``PYTHONPATH`` explicitly if one
needs a helper.

- ``tiny_models``: tiny random-weight causal LMs of every supported family (no downloads).
- ``greedy``: greedy generation with scores, optionally inside a recipe's session.
- ``reference``: an independent reference for decoding after eviction (plain ``DynamicCache``).
- ``engine_plugins``: test-only strategies (``TestPlugin``) for the ``test_strategies`` fixture.
- ``profiles``: learned-allocator profiles fitted to the tiny test models.
- ``scorer_views``: random ``LayerView`` objects for the scorer tests.
- ``embedded``: whether the embedded model's distribution is installed, and a fake converter.
- ``positional_executor``: a third-party-style executor for the executor conformance tests.
- ``clean_model``: whether kvpress_lab left a hook, an attribute or a wrapper on a model.
"""
