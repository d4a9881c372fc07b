"""Where the XML goes: the Storage port and its backends (filesystem, Supabase Storage)."""
