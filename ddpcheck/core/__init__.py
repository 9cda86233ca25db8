"""Pure, standard-library-only formulas and formats every layer shares."""
