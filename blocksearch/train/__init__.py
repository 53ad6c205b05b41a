"""A chosen student's full-length KD run on Ray Train."""
