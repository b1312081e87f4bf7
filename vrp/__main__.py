"""`python -m vrp` / the `vrp` console script."""

from vrp.cli import main

if __name__ == "__main__":
    main()
