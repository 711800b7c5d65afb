"""The node's cache of data objects.

Pure parts (no I/O): ``hashing`` (content hashes), ``eviction`` (LRU-SP
bookkeeping), ``state.reconcile``. Disk parts: ``store`` (one file per
object), ``state`` (saving/loading the cache state). ``mime`` sniffs content
types from leading bytes.
"""
