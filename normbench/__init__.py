"""normbench: a command-line lab bench for normalization layers.

`normbench.load_results(path)` reads run, sweep or results folders into pandas DataFrames
(`normbench.api.Results`: runs, epochs, steps); see docs/python-api.md.
"""

from normbench.version import __version__

__all__ = ["__version__", "load_results"]


def load_results(*paths):
    """`normbench.api.load_results`: runs, epochs and steps of results folders as pandas DataFrames."""
    from normbench.api import load_results as load

    return load(*paths)
