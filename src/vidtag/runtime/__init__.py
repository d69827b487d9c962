"""Artifact loading, inference backends, pre/post-processing and the in-process Tagger."""
