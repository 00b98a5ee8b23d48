"""Conversation-routing benchmark: ``python -m bench.routing``."""
