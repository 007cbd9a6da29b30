"""Memory Mosaics: networks of associative memories."""
