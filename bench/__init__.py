"""`make bench`: every benchmark prints its figure next to a reference measured in the same run."""
