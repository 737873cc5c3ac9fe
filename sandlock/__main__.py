"""``python -m sandlock`` is the ``sandlock`` command."""

from .cli import main

main()
