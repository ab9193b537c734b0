"""Benchmarks for the quality bars in the design brief; run them with ``python -m bench``.

Each benchmark compares Zhibu with a *floor*: the least code doing the same job with the
same libraries, against the project's fake Telegram Bot API server. See ``README.md``.
"""
