"""Tasks built on the encoders, stores and generators (captioning, ...)."""
