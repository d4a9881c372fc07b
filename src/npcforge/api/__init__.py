"""npcforge.api."""
