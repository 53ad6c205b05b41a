"""The toy world, teacher and judge: blocksearch's whole job on a CPU with no network.

``world`` (captioned images), ``models`` (the teacher's parts), ``build`` (``blocksearch toy build``),
``assets`` (the bundled teacher: ``load_toy_teacher``), ``judge`` (FID features and text alignment:
``load_judge``), ``sample`` and ``check`` (``blocksearch toy sample | check``). Nothing is imported here,
so ``blocksearch --help`` does not pay for torch. See docs/design.md, "The toy teacher".
"""
