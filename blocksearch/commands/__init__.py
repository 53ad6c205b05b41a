"""The verbs of ``blocksearch``, one module each: ``add_parser(subparsers)`` registers the verb, its flags and help
texts and sets ``handler`` on each of its (sub-)verbs (``main(args) -> int``, the stage it runs imported inside).

After diffusers' ``commands/``: each command registers its own parser, and cli.py maps verb names to these modules.
Light on purpose: cli.py imports every module here to build the parser, so nothing here imports torch at its top
(``blocksearch --help`` and bad flags answer at once).
"""
