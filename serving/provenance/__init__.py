"""Content credentials (C2PA) for every MP4 Kino writes."""
