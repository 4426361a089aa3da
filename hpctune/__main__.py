"""``python -m hpctune``: the same command line as the ``hpctune`` console script."""

from hpctune.cli import main

if __name__ == "__main__":
    main()
