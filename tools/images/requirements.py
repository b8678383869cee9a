"""Print the pinned requirements of pyproject.toml for one extra (the base ones included).

The Dockerfiles install these before copying the code, so a change to the code reuses the
dependency layer:  python3 requirements.py sched > requirements.txt
"""

import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]
for name in sys.argv[1:]:
    if name not in extras:
        sys.exit(f"requirements.py: no extra {name!r} in pyproject.toml (have {sorted(extras)})")
print("\n".join([*project["dependencies"], *(r for name in sys.argv[1:] for r in extras[name])]))
