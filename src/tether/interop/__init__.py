"""Adapters that give other agent frameworks tether's sessions."""
