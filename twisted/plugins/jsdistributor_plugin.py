"""twistd plugin for the jsdistributor node.

Kept import-light: every ``twistd`` invocation imports this module.
"""

from twisted.application.service import ServiceMaker

jsdistributor = ServiceMaker(
    "jsdistributor",
    "jsdistributor.tap",
    "Joystream distributor node: caches and serves data objects from storage nodes",
    "jsdistributor",
)
