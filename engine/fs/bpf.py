"""bpf: the BPF filesystem; pinned programs and maps cannot be dumped, so only an empty one is
taken (made again empty at restore). One with pins must be declared --external."""

from engine.fs import pseudo_recipe, register
from engine.fs._pseudo import EmptyOnly

TYPE = register(EmptyOnly("bpf", what="pinned BPF objects", requires=("bpf",),
                          recipe=pseudo_recipe("bpf"),
                          fresh_names=frozenset({"maps.debug", "progs.debug"})))  # bpf_preload's iterators
