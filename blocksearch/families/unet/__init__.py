"""SD's U-Net family (BK-SDM, arXiv 2305.15798): genome.py (Genome, Topology), space.py (the YAML loader and the
bound space), topology.py (the teacher's topology, published configs, forward inputs), surgery.py (student config,
weight map, KD pairs), words.py (the report's words), family.py (``FAMILY``: the family object)."""
