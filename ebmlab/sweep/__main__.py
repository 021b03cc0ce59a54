"""``python -m ebmlab.sweep SPEC``: one run of a multi-worker local sweep (see ``executors._run_in_subprocesses``)."""

import json
import sys

from .runner import run_one

if __name__ == "__main__":
    run_one(**json.loads(sys.argv[1]))
