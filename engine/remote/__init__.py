"""The remote engine: engine workers on many GPUs and hosts, over Redis Streams.

``protocol`` is the wire (key names, versioned JSON messages, the Lua scripts that fence
leases), ``connection`` the Redis client and typed stream commands both sides use, ``engine``
the bot's side (``RedisEngine``), ``worker`` the ``imaginebot worker`` agent around an
unchanged ``EngineClient`` (``cli`` its command line), ``results`` where result PNGs travel.
See docs/scaleout.md.
"""
