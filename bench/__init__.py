"""Benchmarks of imagegate, each next to a baseline measured in the same run.

`python -m bench` runs them all and prints one table; `python -m bench create` (or
`pickup`, `references`, `gemini`) runs one. See docs/benchmarks.md. Everything talks only to
servers these modules start on 127.0.0.1.
"""
