"""Plug-ins for the systems our users run (laplace-torch); each imports its system only when imported."""
