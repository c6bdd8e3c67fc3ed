"""Stand-in for ansible-test's pip bootstrap script (get-pip-<version>.py).

ansible-test downloads that script from a CI file host this machine cannot reach; PyPI is
reachable, so bootstrap pip from the interpreter's own ensurepip and install the requested
pip release from PyPI. scripts/test copies this file into ansible-test's cache.
"""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
