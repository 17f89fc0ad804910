"""Dagster code location for the muco pipeline."""
