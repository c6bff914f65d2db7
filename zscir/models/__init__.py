"""Mapping networks (FTI4CIR, single token), training objectives, baselines and query encoders."""
