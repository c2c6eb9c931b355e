"""The ``fabsight`` command line: thin Typer layers over library functions."""
