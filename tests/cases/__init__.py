"""Shared case tables and torch oracles for the tests (never computed with tnderiv)."""
