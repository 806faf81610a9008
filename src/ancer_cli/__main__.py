"""``python -m ancer_cli`` (and so ``torchrun -m ancer_cli``) runs the command-line tool."""

from ancer_cli.cli import main

if __name__ == "__main__":
    main()
