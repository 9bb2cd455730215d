"""Moderation of chat traffic: what to check, when, and what a block looks like."""
