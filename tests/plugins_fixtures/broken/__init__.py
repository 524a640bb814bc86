"""Each sub-package fails in its own way, except ``working``, which must load regardless."""
