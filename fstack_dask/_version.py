"""Package version, in its own module so submodules can import it."""

__version__ = "0.1.0"

#: The generation of the bits a run computes (its blocks, fills and pyramid levels): raised with
#: every change to them, kept in each run's record and compared by a resume, so that no output
#: holds the numbers of two versions. Records without it were begun before 2026-12-06.
NUMERICS = 1

#: The layout of what a run keeps in its output (its record and provenance, done-markers,
#: the metadata it publishes when complete): raised with every change an older version would
#: misread, so that a version refuses, in one line, to resume an output begun in a newer one
#: (a version that kept none read a newer output's record and failed with KeyError 'ome').
#: Records without it hold format 1.
FORMAT = 1
