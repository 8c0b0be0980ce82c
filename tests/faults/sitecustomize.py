"""Python imports this at the start of every process with tests/faults on PYTHONPATH."""

import os

if os.environ.get("KDPIPE_FAULT"):
    import injection

    injection.install()
