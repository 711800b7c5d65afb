"""Hit workers: extra processes that serve cached objects on the public
port next to the node (``publicApi.workers``).

The node (the *primary*) stays the only process that downloads, owns the
cache index, the state and the operator API. A worker shares the public
port through ``SO_REUSEPORT`` (the kernel spreads new connections over the
processes), serves a hit straight from the assets directory (a file there
is always complete and verified) and relays every other request over
loopback to the primary, so each object is still downloaded once per
machine. The two talk AMP over a socket pair (:mod:`.commands`).
"""
