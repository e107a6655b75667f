"""In-repo adapters: one self-contained folder each, registered through the ``smartpark`` entry-point group
exactly like a third-party plugin. Adapters never import each other."""
