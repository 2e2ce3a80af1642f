"""`hhh ARGS` as a new interpreter's argv, with nothing from the current directory importable.

`python -m hhh.cli` puts the current directory first on sys.path, and `python -c` puts '' there (the current
directory, looked up again at each import). Either way an `argparse.py` or a checkout folder named `hhh/` in
whatever directory the command runs from would be imported instead of ours. So hhh starts itself (the jemalloc
re-exec, sweep trials) with `-c` code that drops that entry before it imports anything that is not built in.
Python 3.11's -P (PYTHONSAFEPATH) never adds the entry, and then sys.path[0] is one the user chose: it stays.
"""

from __future__ import annotations

import sys

# One line, as sweep logs show the command: `or` runs the pop only when neither test before it holds.
_MAIN = ("import sys; getattr(sys.flags, 'safe_path', 0) or sys.path[:1] != [''] or sys.path.pop(0); "
         "from hhh.cli import main; sys.exit(main())")


def hhh_argv(*args) -> list[str]:
  """The argv that runs `hhh ARGS...` in a fresh interpreter (this one's executable)."""
  return [sys.executable, "-c", _MAIN, *map(str, args)]
