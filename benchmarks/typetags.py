"""Run a module with CPython's class version tags moved along:
``python -m benchmarks.typetags N MODULE ARGS...``.

CPython 3.11 caches attribute lookups on classes in a table of 4,096 entries, indexed by the
class's version tag (a number each class is given the first time an attribute is looked up on it,
counting up) and by the attribute name's hash. Two lookups that land on the same entry evict each
other, and each miss walks the class's MRO. Which lookups of a program collide depends on the hash
seed and on the order in which classes were first used, which any import or class definition
anywhere moves: a percent or two of a lookup's instructions, the same on every run of one program.
Tagging ``N`` throwaway classes before anything else is imported moves the tag of every class the
program uses after them, as another import would, so that counts taken under several ``N`` show
that spread instead of one draw of it.
"""

from __future__ import annotations

import runpy
import sys


def shift(count: int) -> None:
    """Give ``count`` new classes a version tag each."""
    for _ in range(count):

        class Tagged:
            pass

        _ = Tagged.mro  # the first lookup on a class gives it its tag


if __name__ == "__main__":
    _count, _module, *_args = sys.argv[1:]
    shift(int(_count))
    sys.argv = [_module, *_args]
    runpy.run_module(_module, run_name="__main__", alter_sys=True)
