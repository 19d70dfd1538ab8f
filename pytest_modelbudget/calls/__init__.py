"""Kinds of call."""
