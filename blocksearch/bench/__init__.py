"""The benchmarks of ``blocksearch bench``: one module per command, each imported only when it runs."""
