"""``python -m smartpark``: the same as the ``smartpark`` command."""

from .cli import main

if __name__ == "__main__":
    main()
