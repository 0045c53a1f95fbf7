"""The benchmark scripts (run each as ``python benchmarks/NAME.py``; see docs/benchmarks.md).

A package only so that the scripts share ``benchmarks._smoke`` (their ``--smoke`` mode) by one
name, whichever way they are started.
"""
