"""SDXL's U-Net as a denoiser family (family.py): the U-Net family's surgery under SDXL's conditioning."""
