"""Two plugins whose buttons interleave by declared row and order."""
