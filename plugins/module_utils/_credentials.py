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
import time

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
    if not os.path.isdir(credentials_dir):
        os.makedirs(credentials_dir, 0o700)
    key = "".join(secrets.choice(_ALPHABET) for _i in range(KEY_LENGTH))
    try:
        # O_EXCL: two runs starting at once keep one key (the loser reads the winner's).
        fd = os.open(api_key_path(credentials_dir), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
        for _attempt in range(50):  # the other run writes its key right after creating the file
            try:
                other = read_api_key(credentials_dir)
            except ValueError:
                other = None
            if other:
                return other
            time.sleep(0.1)
        raise ValueError("%s stays empty: delete it to generate a new key" % api_key_path(credentials_dir)) from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
