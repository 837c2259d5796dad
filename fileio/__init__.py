"""Writing files safely: every file slidestream writes goes through :mod:`slidestream.fileio.atomic`.

A reader (another process, QuPath, a rerun after a crash) sees either the old file or the whole new one, never a
half-written one, and the new file gets the permissions the user's umask gives (0644 under umask 022).
:mod:`slidestream.fileio.ledger` records which files of a folder slidestream wrote, so that outputs never replace
anything else.
"""

from .atomic import (TEMP_SUFFIX, atomic_open, atomic_path, atomic_write, is_temp_name, pid_alive,
                     remove_stale_temps, strict_json, write_json)
from .ledger import (LEDGER_NAME, OutputGuard, adopt_legacy, file_sha256, is_protected_input, output_folder,
                     protect_inputs)

__all__ = ["LEDGER_NAME", "TEMP_SUFFIX", "OutputGuard", "adopt_legacy", "atomic_open", "atomic_path", "atomic_write",
           "file_sha256", "is_protected_input", "is_temp_name", "output_folder", "pid_alive", "protect_inputs",
           "remove_stale_temps", "strict_json", "write_json"]
