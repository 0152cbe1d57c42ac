"""``python -m mmrag.cli``: the same as the ``mmrag`` console script."""

from mmrag.cli import main

main()
