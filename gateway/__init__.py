"""edgegw gateway: the CPython asyncio agent and the `edgegw` command line."""

__version__ = "0.1.0"
