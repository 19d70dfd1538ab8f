"""The command line (``python -m pytest_modelbudget``): the ``profile`` command."""
