"""Shared test helpers: real service processes, test objects, waiting without sleeps."""
