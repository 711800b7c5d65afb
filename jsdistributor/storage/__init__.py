"""Storage nodes ("Colossus"): the HTTP client, response-time ranking and
source selection.

- :mod:`.client`: ``StorageClient`` (``IStorageClient``), ``make_pool``;
- :mod:`.ranking`: ``ResponseTimes`` (pure);
- :mod:`.sources`: ``StorageNodes`` (a Service: probing, ``find_sources``,
  download slots).
"""

from .client import StorageClient, StorageResponse, make_pool
from .ranking import ResponseTimes
from .sources import StorageNodes

__all__ = ["ResponseTimes", "StorageClient", "StorageNodes", "StorageResponse", "make_pool"]
