"""Deprecated: the training engine moved to :mod:`racnn.training` (racnn 0.2). Import from there.

This module only re-exports the public names it had, so scripts written for racnn 0.1 keep working; it warns once.
"""

import warnings

from racnn.training import *  # noqa: F403
from racnn.training import __all__  # noqa: F401

warnings.warn(
    "racnn.engine is deprecated: import from racnn.training instead (e.g. from racnn.training import fit)",
    DeprecationWarning,
    stacklevel=2,
)
