"""`python -m splitpin` is the same CLI as the `splitpin` script."""

from splitpin.app.cli import main

if __name__ == "__main__":
    main()
