"""npcforge: NPC records in PostgreSQL to Jiddo NPC XML, through a language model."""

__version__ = "0.1.0"
