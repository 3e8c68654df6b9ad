"""Which axolotl the plugin runs on: checked once per process, from the plugin's `register`.

pyproject.toml asks only for ``axolotl>=0.19.0``, so installing the package never replaces
the axolotl a user has. Instead, at start-up:

* a tested release series (:data:`TESTED_AXOLOTL`, the rows of the tested-with table) passes
  silently;
* a newer or in-between untested release (0.20.x, 0.22 and later) gets one warning naming
  the tested ones;
* a release below :data:`MINIMUM_AXOLOTL` is refused with an error naming the installed and
  the required version. Nothing older was ever run with the package; before 0.10
  ``axolotl.loaders`` (``load_tokenizer``, used for the ``<mask>`` token) does not exist.
"""

from __future__ import annotations

import logging
from importlib import metadata

from packaging.version import InvalidVersion, Version

LOG = logging.getLogger("axolotl.maskthought")

# The axolotl releases CI runs the suite on (the tested-with table's axolotl column; a test
# keeps the two equal). A release of the same minor series counts as tested.
TESTED_AXOLOTL = ("0.19.0", "0.21.0")
# pyproject.toml's lower bound (a test keeps the two equal): the oldest tested release.
MINIMUM_AXOLOTL = "0.19.0"

_warned: set[str] = set()


class UnsupportedAxolotlError(RuntimeError):
    """The installed axolotl is older than the package requires."""


def _series(version: Version) -> tuple[int, int]:
    return version.major, version.minor


def tested_series() -> list[str]:
    """The tested release series as ``"0.19.x"`` strings, oldest first."""
    return [f"{major}.{minor}.x" for major, minor in sorted({_series(Version(v)) for v in TESTED_AXOLOTL})]


def check_axolotl_version(installed: str) -> str | None:
    """Judge an axolotl version string.

    Returns:
        None for a tested release series; otherwise the warning text for an untested one.

    Raises:
        UnsupportedAxolotlError: ``installed`` is below :data:`MINIMUM_AXOLOTL`, or is not a
            version string.
    """
    try:
        version = Version(installed)
    except InvalidVersion as error:
        raise UnsupportedAxolotlError(
            f"axolotl reports version {installed!r}, which is not a version string; "
            f"axolotl-maskthought requires axolotl>={MINIMUM_AXOLOTL}"
        ) from error
    if version < Version(MINIMUM_AXOLOTL):
        raise UnsupportedAxolotlError(
            f"axolotl {installed} is installed; axolotl-maskthought requires axolotl>={MINIMUM_AXOLOTL} "
            f"(tested with {', '.join(tested_series())}). Upgrade axolotl: pip install 'axolotl>={MINIMUM_AXOLOTL}'"
        )
    if _series(version) in {_series(Version(v)) for v in TESTED_AXOLOTL}:
        return None
    return (
        f"axolotl {installed} has not been tested with axolotl-maskthought (tested with "
        f"{', '.join(tested_series())}); it may work, but if training or merging fails, try a tested version"
    )


def warn_if_untested_axolotl() -> None:
    """Check the installed axolotl (:func:`check_axolotl_version`); log the warning for an
    untested version once per process.

    Raises:
        UnsupportedAxolotlError: the installed axolotl is too old.
    """
    installed = metadata.version("axolotl")
    message = check_axolotl_version(installed)
    if message is not None and installed not in _warned:
        _warned.add(installed)
        LOG.warning(message)
