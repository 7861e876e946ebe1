"""The per-exposure fan-in: fiber-to-fiber adjustment, blank-sky fiber choice, sky model and error check."""
