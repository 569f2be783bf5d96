"""proxy-service: reads across every schema, writes nothing, owns no schema."""

import importlib.util
import sys
from pathlib import Path

# cathouse_common (shared by the services) sits in the example's root; see its docstring.
if importlib.util.find_spec("cathouse_common") is None:
    sys.path.append(str(Path(__file__).resolve().parents[2]))
