"""Writing files safely: every file slidestream writes goes through :mod:`slidestream.fileio.atomic`.

A reader (another process, QuPath, a rerun after a crash) sees either the old file or the whole new one, never a
half-written one, and the new file gets the permissions the user's umask gives (0644 under umask 022).
"""

from .atomic import (TEMP_SUFFIX, atomic_open, atomic_path, atomic_write, is_temp_name, pid_alive,
                     remove_stale_temps, strict_json, write_json)

__all__ = ["TEMP_SUFFIX", "atomic_open", "atomic_path", "atomic_write", "is_temp_name", "pid_alive", "remove_stale_temps",
           "strict_json", "write_json"]
