"""npcforge.worker."""
