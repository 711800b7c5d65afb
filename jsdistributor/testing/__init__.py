"""Verified fakes for tests (and users) of jsdistributor."""
