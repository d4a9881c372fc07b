"""Turning an NPC record into XML: providers, prompts, the XML rules and their validator."""
