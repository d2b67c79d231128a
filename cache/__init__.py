"""Shared cache layer: key layout, envelope codec, versioned Lua writes, L1, invalidations."""
