"""Denoiser families (base.py): the U-Net (unet.py) and transformer denoisers (dit.py)."""
