"""The shipped search spaces, installed as package data ``blocksearch.search_spaces``.

pyproject.toml maps this folder onto that subpackage (``[tool.setuptools] package-dir``), so a wheel and an
editable install both find ``--space unet_blocks`` through ``importlib.resources`` (blocksearch/space.py).
Every ``*.yaml`` here is a space; this file only makes the folder a package.
"""
