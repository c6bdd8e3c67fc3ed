# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Credentials the controller generates once and keeps (plain Python: the api_key lookup and the CLI).

The API key fails closed: the key the operator gives, else one generated into
``<credentials dir>/api-key`` (0600 in a 0700 directory) on the first run and read back by every
later run, the bench phase and the CLI; no key only when the API is explicitly open.
"""

from __future__ import annotations

import errno
import os
import secrets
import string
import tempfile

API_KEY_FILE = "api-key"
_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 48


def api_key_path(credentials_dir: str) -> str:
    return os.path.join(credentials_dir, API_KEY_FILE)


def read_api_key(credentials_dir: str) -> str | None:
    """The generated key, or None when none was generated yet."""
    try:
        with open(api_key_path(credentials_dir)) as f:
            key = f.readline().strip()
    except IOError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    if not key:
        raise ValueError("%s is empty: delete it to generate a new key" % api_key_path(credentials_dir))
    return key


def resolve_api_key(given: str, api_open: bool, credentials_dir: str) -> str:
    """The key vLLM serves with: ``given``, else the generated one (made now if missing); '' when open."""
    if api_open:
        return ""
    if given:
        return given
    key = read_api_key(credentials_dir)
    if key:
        return key
    os.makedirs(credentials_dir, 0o700, exist_ok=True)
    key = "".join(secrets.choice(_ALPHABET) for _i in range(KEY_LENGTH))
    # Written whole to a private temporary file, then linked into place: the link fails if another
    # run (or another host's fork of this one) was first, and the file is never seen half written.
    fd, tmp = tempfile.mkstemp(dir=credentials_dir, prefix=".api-key.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, api_key_path(credentials_dir))
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            return read_api_key(credentials_dir) or key
    finally:
        os.unlink(tmp)
    return key
