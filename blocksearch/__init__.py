"""blocksearch: find small, fast Stable Diffusion U-Nets by block removal and distillation.

BK-SDM (Kim et al., arXiv 2305.15798) as a search: space -> surgery -> distill -> evaluate -> search
-> report -> export.
"""

__version__ = "0.1.0"
