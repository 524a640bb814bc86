"""Everything the tests share: harnesses, fixtures and fake modules. Start here.

tests/conftest.py registers the fixture modules, so a test asks for these by name:

- ``emulator`` (emulator.py): a fresh Discord emulator that discord.py points at.
- ``sandbox_bot`` (sandbox_bot.py): the small discord.py bot of the emulator's own tests.
- ``shared_engine``, ``test_model`` (bot.py): one engine worker per module and its tiny model,
  for the real ImagineBot; bot.py also has ``running_bot``, ``idle_bot`` and the ``wait_for_*``
  helpers.
- ``tiny_model`` (models.py): tiny random-weight models of each family, built once per run;
  ``one_thread`` (models.py) runs torch on one thread for a test that runs one in-process.
- ``test_upscaler`` (upscaler.py): a tiny ESRGAN checkpoint.
- ``redis_url``, ``redis_server``, ``tcp_proxy`` (redis.py): an empty Redis database, a
  redis-server to kill -9 and restart (AOF kept or empty), a proxy that blackholes a client.
- ``open_browser`` (browser.py): headless Chromium at 1280x800 (or ``PHONE``); a failed test
  leaves its screenshots, HTML and console logs under test-artifacts/browser/.

Imported directly, not registered: ledger.py (the ledger and migration tests' databases and
``FakeClock``), engines.py (engines behind engine.dispatch for the job queue's tests:
``FakeEngine``, workers and jobs the test drives, and ``TrustingLocalEngine`` around a fake
client), engine_checks.py (the engine contract tests' requests, event streams and pixels),
job_machine.py (what the job queue's state machines share: the planned Discord ``Observer``,
``settle`` and ``QueueMachine``) and engine_ops.py, an engine operation module the worker
imports by name, as are stall_ops.py (a slow worker, a slow load) and hang_on_import.py (a
worker that hangs at start).
workers.py runs ``imaginebot worker`` subprocesses for the scale-out tests (and
bench/scaleout.py), to kill, stop and restart.
playground_process.py starts the real ``imaginebot playground`` and finds what it started.
tests/plugins_fixtures/ holds fake plugin packages that the loader tests import by name.
"""
