"""sweeps: study specs (YAML), their schema and validation, and the planner (grid → cells → stages)."""
