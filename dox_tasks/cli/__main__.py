"""``python -m dox_tasks.cli``: the same as the ``dox`` console script."""

from dox_tasks.cli import main

if __name__ == "__main__":
    main()
