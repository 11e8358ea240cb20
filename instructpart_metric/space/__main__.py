"""`python -m instructpart_metric.space`: the metric Space's app.py, run from the package (see its docstring)."""

from .app import main

if __name__ == "__main__":
    main()
