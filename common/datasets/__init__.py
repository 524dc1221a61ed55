"""Loaders that split the shared real data sets into factories the way the field does."""
