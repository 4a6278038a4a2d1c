"""hugetlbfs: files in huge pages cannot be archived (no write(2)), so only an empty one is taken
(made again empty, with its options, at restore). One with files must be declared --external."""

from engine.fs import pseudo_recipe, register
from engine.fs._pseudo import EmptyOnly

TYPE = register(EmptyOnly("hugetlbfs", what="files", requires=("hugetlbfs",),
                          recipe=pseudo_recipe("hugetlbfs")))
