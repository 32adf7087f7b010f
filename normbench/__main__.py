"""`python -m normbench` runs the CLI."""

from normbench.cli import main

if __name__ == "__main__":
    main()
