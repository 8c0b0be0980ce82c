"""`python -m kdpipe` is the same as the `kdpipe` command (torchrun launches it this way)."""

from kdpipe.entry import main

main()
