"""npcforge.db."""
