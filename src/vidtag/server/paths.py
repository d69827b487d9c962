"""Server-side file-path inputs (`TagVideoRequest.path`): off unless roots are configured, and
then confined to them.

A path is accepted only when it is absolute and, after resolving `..` and every symbolic link,
lies inside one of the allowed roots (themselves resolved once, at start-up). Containment is
decided before the file is looked at, so a client learns nothing about files outside the roots
(every such path is PERMISSION_DENIED, whether it exists or not). The resolved file is opened
without following a final symbolic link and checked on the open descriptor (a regular file, no
larger than an upload may be); on Linux the descriptor's own path is checked against the roots
again, so a directory swapped for a link after the check cannot redirect the read. The
server only checks (`check`); the decoder, in its worker process, opens the real path again
and decodes it only if it is still the file checked (device and inode), reading just the
index and the planned packets instead of the whole file through the server and a pipe.
URLs are refused: nothing is ever fetched over a network. The file's name plays no part in how
it is decoded; its content does.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import grpc

from vidtag.decode.source import READ_UNTRUSTED, FileRef
from vidtag.server.errors import RpcFailure


class PathInputs:
    """Checks `path` inputs for the servicer, or refuses them with a status and a reason."""

    def __init__(self, roots: Sequence[Path], max_bytes: int) -> None:
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)
        self.max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    def resolve(self, path: str) -> Path:
        """The real path of `path`, if it lies inside an allowed root (RpcFailure if not)."""
        if not self.enabled:
            raise RpcFailure(
                grpc.StatusCode.PERMISSION_DENIED,
                "path inputs are disabled on this server (see vidtag serve --allow-path-root)",
            )
        if "://" in path:
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                "path must be a file on the server; URLs are not fetched",
            )
        if "\x00" in path or not os.path.isabs(path):
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "path must be absolute")
        real = Path(os.path.realpath(path))  # `..` and symbolic links, as far as they exist
        self._check_inside(real)
        return real

    def _check_inside(self, real: Path) -> None:
        if not any(real.is_relative_to(root) for root in self.roots):
            raise RpcFailure(
                grpc.StatusCode.PERMISSION_DENIED, "path is outside the server's allowed roots"
            )

    def check(self, path: str) -> FileRef:
        """The regular file at `path`, inside the roots and under the cap, checked but not read
        (blocking: call off the event loop): a decoder opens it itself and reads only what it
        needs (`vidtag.decode.source.FileRef`: the same file or an error)."""
        real = self.resolve(path)
        try:
            fd = os.open(real, READ_UNTRUSTED)
        except FileNotFoundError:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "no such file") from None
        except OSError as exc:
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT, f"cannot open the file: {exc.strerror}"
            ) from None
        try:
            # What was opened, whatever happened to the path's directories since realpath.
            opened = f"/proc/self/fd/{fd}"
            if os.path.islink(opened):
                real = Path(os.readlink(opened))
                self._check_inside(real)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "path is not a regular file")
            if info.st_size > self.max_bytes:
                raise RpcFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"file is {info.st_size} bytes; the server's cap is {self.max_bytes}",
                )
            return FileRef(str(real), info.st_dev, info.st_ino, info.st_size)
        finally:
            os.close(fd)
