"""Data sources that turn a cloud's billing and usage data into costwatch's normalized frames.

Each provider lives in its own subpackage so that optional dependencies (cloud SDKs, pyarrow) are only
imported by the provider that needs them.
"""
