"""Whole models: every quantity for every layer of a torch model from one forward and backward."""
