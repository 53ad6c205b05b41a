"""Adapters across the cut (issue 32): the block map every student folder carries (``blockmap.py``), and the
teacher's adapters carried onto the student by it (``lora.py``: ``blocksearch adapt lora``)."""
