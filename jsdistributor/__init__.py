"""jsdistributor: a Joystream distributor ("bandwidth") node on Twisted."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jsdistributor")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+unknown"


__version__ = _version()
