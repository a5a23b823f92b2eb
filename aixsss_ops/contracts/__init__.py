"""Models of the contracts the AIXSSS services honour (see AIXSSS.md): their environments."""
