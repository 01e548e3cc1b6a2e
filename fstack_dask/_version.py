"""Package version, in its own module so submodules can import it."""

__version__ = "0.1.0"

#: The generation of the bits a run computes (its blocks, fills and pyramid levels): raised with
#: every change to them, kept in each run's record and compared by a resume, so that no output
#: holds the numbers of two versions. Records without it were begun before 2026-12-06.
NUMERICS = 1
