"""``make bench``: side-by-side measurements of Flywheel against its peers (not tests)."""
