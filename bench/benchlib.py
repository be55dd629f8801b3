"""Shared helpers of the Python benchmarks in bench/ (stdlib only)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir():
    """The cargo target dir the Makefile and CI use."""
    return os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tidecast/target"))


def binary():
    """The release tidecast binary (or $TIDECAST_BIN); exits with a hint if it is not built."""
    path = os.environ.get("TIDECAST_BIN", os.path.join(target_dir(), "release", "tidecast"))
    if not os.access(path, os.X_OK):
        sys.exit(f"build first: cargo build --release -p tidecast ({path} missing)")
    return path
