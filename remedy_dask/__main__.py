"""``python -m remedy_dask`` runs the command line."""

from remedy_dask.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
