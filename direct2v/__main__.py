"""``python -m direct2v ...`` is the same as the ``direct2v`` command."""

from direct2v.cli import main

if __name__ == "__main__":
    main()
