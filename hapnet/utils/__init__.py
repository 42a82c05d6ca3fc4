"""Small helpers every stage shares: text files as users have them, atomic outputs, index
arithmetic on numpy arrays, the cache folder, torch's CPU threads."""
