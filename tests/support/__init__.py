"""Everything the tests share: harnesses, fixtures and fake modules. Start here.

tests/conftest.py registers the fixture modules, so a test asks for these by name:

- ``emulator`` (emulator.py): a fresh Discord emulator that discord.py points at.
- ``sandbox_bot`` (sandbox_bot.py): the small discord.py bot of the emulator's own tests.
- ``shared_engine``, ``test_model`` (bot.py): one engine worker per module and its tiny model,
  for the real ImagineBot; bot.py also has ``running_bot``, ``idle_bot`` and the ``wait_for_*``
  helpers.
- ``tiny_model`` (models.py): tiny random-weight models of each family, built once per run.
- ``test_upscaler`` (upscaler.py): a tiny ESRGAN checkpoint.

Imported directly, not registered: ledger.py (the ledger and migration tests' databases and
``FakeClock``) and engine_ops.py, an engine operation module the worker imports by name, as are
stall_ops.py (a slow worker, a slow load) and hang_on_import.py (a worker that hangs at start).
tests/plugins_fixtures/ holds fake plugin packages that the loader tests import by name.
"""
