"""Cluster: the only layer that imports Ray (searcher, scheduler, trainable, launch)."""
