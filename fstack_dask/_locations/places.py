"""Local paths and plain URLs as places: canonical paths, symlinks, HTTP URLs."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .location import Location

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.DOTALL)


_LOCAL_SCHEMES = ("file", "local")


_READ_ONLY_SCHEMES = ("http", "https")


def _local(spec: str, path: str, name: str, options: Mapping[str, Any], writable: bool) -> Location:
    if options:
        option = "dst_storage_options" if name == "dst" else "storage_options"
        raise ValueError(
            f"{option} only apply to URLs such as 's3://...', but {name} {spec!r} is a local path"
        )
    if not path:
        raise ValueError(f"{name} {spec!r} names no path")
    expanded = os.path.expanduser(path)
    # realpath, not abspath: 'link/..' must mean the parent of the link's target, as the OS
    # would take it, and symlinked spellings must compare equal.
    try:
        canonical = os.path.realpath(expanded)
    except OSError as exc:  # a folder on the way that may not be read (/proc/1/root, ...)
        raise PermissionError(
            f"{name} {spec!r} cannot be resolved: {exc.strerror or exc} ({exc.filename!r})"
        ) from None
    try:
        os.stat(canonical)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(
                f"{name} {spec!r} is a symlink loop: {canonical!r} never leads to a file or "
                f"folder; remove the link or choose another {name}"
            ) from None
        if writable and exc.errno == errno.ENOENT and _through_dangling_symlink(expanded):
            # Writing would create the link's target, somewhere the user did not name.
            raise ValueError(
                f"{name} {spec!r} is a dangling symlink to {canonical!r}, which does not "
                f"exist; fstack_dask does not create a folder through a symlink: create "
                f"{canonical!r} first, or give it as {name}"
            ) from None
    return Location(spec, "file", canonical, {})


def _through_dangling_symlink(path: str) -> bool:
    """Whether the OS, walking ``path`` component by component, meets a symlink to nothing
    (``link``, and also ``link/.`` or ``link/x/..``, which a third adversarial run wrote
    through)."""
    here = "/" if path.startswith("/") else os.getcwd()
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":  # as the OS does: the parent of where the walk has arrived
            here = os.path.dirname(here)
            continue
        here = os.path.join(here, part)
        if os.path.islink(here):
            if not os.path.exists(here):
                return True
            here = os.path.realpath(here)
    return False


def _first(protocol: str | tuple[str, ...]) -> str:
    return protocol if isinstance(protocol, str) else protocol[0]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_only(name: str, spec: str) -> ValueError:
    return ValueError(
        f"{name} {spec!r} is an HTTP URL, which is read-only; write to a local path or an "
        f"object store such as s3://bucket/key"
    )


def _http(
    spec: str, url: str, name: str, options: Mapping[str, Any], via: tuple[Any, ...] = ()
) -> Location:
    """An HTTP(S) URL as a place: its query string (a token, a presigned URL's signature) sent
    as it is with every request (``query``), not kept in the path, where a store's keys were
    appended after it (``stack.zarr?token=abc/zarr.json``), nor in messages or outputs."""
    if re.search(r"\[[^\]/]*::", spec):  # (url_to_fs split it there: "Invalid IPv6 URL")
        raise ValueError(
            f"{name} {_redacted(spec)!r}: its IPv6 address holds '::', which fsspec takes for "
            "the link of a chained URL: write the address in full ([0:0:0:0:0:0:0:1] for "
            "[::1]), or use a host name"
        )
    query = urllib.parse.urlsplit(url).query
    if query and "params" in options:
        option = "dst_storage_options" if name == "dst" else "storage_options"
        raise ValueError(
            f"{name} {_redacted(spec)!r} carries a query string and {option} give 'params' "
            "too; give the query in one of them"
        )
    if _USERINFO_CUT.match(url):  # (its host read from the password: a "port" not a number)
        raise ValueError(
            f"{name} {_redacted(spec)!r}: its password holds '/', '?' or '#', which end a URL's "
            "host part: write them %2F, %3F and %23"
        )
    url, auth = _http_url(_redacted(spec), url, name), _userinfo(url)
    if auth is not None:  # sent with every request, never kept in the path (nor the record)
        if "auth" in options:
            option = "dst_storage_options" if name == "dst" else "storage_options"
            raise ValueError(
                f"{name} {_redacted(spec)!r} carries a user name and password and {option} "
                "give 'auth' too; give them in one of them"
            )
        options = {**options, "auth": auth}
    return Location(_redacted(spec), "http", url, dict(options), via, query=query)


def _userinfo(url: str) -> Any:
    """The ``user:password@`` of an HTTP(S) URL as aiohttp's ``BasicAuth``, or None: it was
    kept in the URL read, and so printed in error lines and written into the output's record
    (its ``src`` and source identity), password and all."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return None
    import aiohttp

    user, _, password = parts.netloc.rpartition("@")[0].partition(":")
    return aiohttp.BasicAuth(urllib.parse.unquote(user), urllib.parse.unquote(password))


def _redacted(spec: str) -> str:
    """``spec`` with its query's values hidden (a token, a signature: credentials that a batch
    log or a pasted error would show), and its password (``user:***@``); the names are kept,
    and the URL without them is read."""
    spec = _hide_userinfo(spec)
    head, mark, rest = spec.partition("?")
    if not mark:
        return spec
    query, hash_, fragment = rest.partition("#")
    # a part without "=" is all value (a bare key, ?s3cr3t, was printed as a name)
    hidden = [f"{p.partition('=')[0]}=***" if "=" in p else "***" for p in query.split("&") if p]
    return head + "?" + "&".join(hidden) + hash_ + fragment


_QUERIED_URL = re.compile(r"""(?i)\bhttps?://[^\s'"?#]*\?[^\s'"#]*""")
# the password of a URL's user:password@ (its host part: up to the first '/', '?' or '#'),
# and one that holds them unencoded, up to the last '@' (not a port's digits): it was
# printed whole, 'https://alice:pa/ss@host/'
# (a user name holds no '[': an IPv6 host's own ':', http://[0:0:0:0:0:0:0:1]:8080/a@b/, was
# taken for a password's, the path mangled, 'http://[0:***@b/')
# Any scheme's: ftp://, sftp://, webhdfs://, s3:// URLs' printed whole
_PASSWORD = re.compile(
    r"""(?i)\b([a-z][a-z0-9+.-]*://[^\s'"/?#@:\[\]]*):(?:[^\s'"/?#]*@|(?!\d*(?:[/?#\s'"]|$))[^\s'"]*@)"""
)
# a password of digits then '/', '?' or '#' (https://alice:12/x@host/) reads as a port: it
# was printed whole ("its host name 'alice' does not resolve"), and still after a user
# name with a dot (alice.smith, alice%40lab.org); hidden wherever the "host" is no IP
# address nor localhost (a path holding '@' after a port, http://fileserver:8080/a@b/, too)
_DIGITS_PASSWORD = re.compile(
    r"""(?i)\b(https?://(?!localhost:|(?:\d+\.){3}\d+:)[^\s'"/?#@:\[]+):\d+[/?#][^\s'"]*@"""
)
# a user name without a password (a token, as GitHub's and Hugging Face's are given:
# https://TOKEN@host/) is sent as basic auth too: it was printed whole
_LONE_USER = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*://)[^\s'"/?#@:\[\]]+@""")
_USERINFO_CUT = re.compile(r"""(?i)https?://[^/?#@:\[\]]*:(?!\d*(?:[/?#]|$))[^/?#@]*[/?#].*@""")


def redact_urls(text: str) -> str:
    """``text`` with every HTTP(S) URL's query values hidden, as :func:`_redacted` does: an
    aiohttp error names the URL it requested, token and all."""
    return _QUERIED_URL.sub(lambda m: _redacted(m.group(0)), _hide_userinfo(text))


def _hide_userinfo(text: str) -> str:
    """``text`` with every URL's password, or user name given alone, as ``***``."""
    text = _DIGITS_PASSWORD.sub(r"\1:***@", _PASSWORD.sub(r"\1:***@", text))
    return _LONE_USER.sub(r"\1***@", text)


def _http_url(spec: str, url: str, name: str) -> str:
    """The whole URL without its query, as fsspec's HTTP filesystem takes paths, with its path
    normalised."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{name} {spec!r} names no host")
    path = posixpath.normpath("/" + parts.path.lstrip("/")) if parts.path.strip("/") else ""
    # the fragment never reaches the server; the query goes as params (_http)
    host = parts.netloc.rpartition("@")[2]  # (a password goes as auth: _userinfo)
    return urllib.parse.urlunsplit((parts.scheme.lower(), host, path, "", ""))


def _place(
    spec: str,
    protocol: str,
    path: str,
    name: str,
    options: Mapping[str, Any],
    writable: bool,
    **extra: Any,
) -> Location:
    """A path on a non-HTTP fsspec filesystem, normalised."""
    if protocol in _LOCAL_SCHEMES:  # e.g. 'file' registered under another name
        return _local(spec, path, name, options, writable)
    rooted = path.startswith("/")
    path = posixpath.normpath(path) if path else path
    # "/": memory://. and memory://x/.. are memory://'s root, as refused: an --overwrite of an
    # output there staged it inside itself, then failed, the output broken
    if path in (".", "", "/") or (not rooted and path.startswith("..")):
        raise ValueError(f"{name} {spec!r} names no place inside its store")
    if not rooted:
        path = path.lstrip("/")
    return Location(spec, protocol, path, dict(options), **extra)


_READ_ONLY = "it is on a read-only filesystem (remount it read-write, or choose another place)"


def owner_and_mode(st: os.stat_result, path: str | None = None) -> str:
    """``owned by USER (group GROUP), mode 755``, with names where the system knows them,
    and ``, with an ACL`` where ``path`` has one: the mode alone does not say who may (a mode
    777 folder refused to this user by its ACL read as a contradiction)."""
    import grp
    import pwd
    import stat

    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    acl = ", with an ACL (getfacl shows it)" if path is not None and _has_acl(path) else ""
    return f"owned by {user} (group {group}), mode {stat.S_IMODE(st.st_mode):o}{acl}"


_ACLS = ("system.posix_acl_access", "system.nfs4_acl")  # Linux's POSIX ACL, NFSv4's


def _has_acl(path: str) -> bool:
    """Whether ``path`` carries an access ACL (an extended attribute; none where the system
    or the filesystem has no such attributes)."""
    try:
        return any(name in _ACLS for name in os.listxattr(path))
    except (OSError, AttributeError):  # (AttributeError: no listxattr, as on macOS)
        return False


def read_only_mount(path: str) -> bool:
    """Whether the local ``path`` lies on a filesystem mounted read-only (``statvfs``)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # (Windows has no statvfs)
        return False


# FS_IMMUTABLE_FL, FS_APPEND_FL (chattr's flags), which statx's STATX_ATTR_IMMUTABLE and
# STATX_ATTR_APPEND equal
_LOCKS = ((0x10, "immutable", "i"), (0x20, "append-only", "a"))
_LOCK_BITS = 0x30


def change_locked(path: str) -> str | None:
    """Whether the local ``path`` is marked immutable or append-only (``chattr +i``/``+a``;
    ``FS_IOC_GETFLAGS``), for one line: then nothing in it (or, immutable, itself) may be
    removed or renamed, even by root, whatever its owner and mode say; or None (none of
    these marks, or a system or filesystem without them)."""
    mark = _mark(_flags(path) or 0)
    return None if mark is None else f"{path!r} is {mark}"


def marks_reader(top: str) -> Callable[[str], str | None] | None:
    """How to ask each entry under the local folder ``top`` for a mark of
    :func:`change_locked`'s, many times over: ``statx``'s attributes where its filesystem
    reports these marks (one call, no open), else ``FS_IOC_GETFLAGS`` where that answers for
    ``top``; None where the filesystem has no such marks. The function returns what
    :func:`change_locked` does (a link: None)."""
    with contextlib.suppress(OSError):
        known = statx_attributes(top)
        if known is not None and known[1] & _LOCK_BITS == _LOCK_BITS:

            def by_statx(path: str) -> str | None:
                try:
                    mark = _mark(statx_attributes(path)[0])  # type: ignore[index]
                except OSError:  # (gone meanwhile)
                    return None
                return None if mark is None else f"{path!r} is {mark}"

            return by_statx
    return None if _flags(top) is None else change_locked


def _flags(path: str) -> int | None:
    """``path``'s inode flags (``FS_IOC_GETFLAGS``), or None where none can be read (a
    link, a filesystem or system without them)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (ImportError, OSError):
        return None
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, 0x80086601, flags)  # FS_IOC_GETFLAGS (the kernel writes an int)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int.from_bytes(flags[:4], sys.byteorder)


def _mark(value: int) -> str | None:
    for bit, name, letter in _LOCKS:
        if value & bit:
            return f"marked {name} (chattr +{letter}; chattr -{letter} clears it)"
    return None


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def statx_attributes(path: str) -> tuple[int, int] | None:
    """``statx``'s ``(stx_attributes, stx_attributes_mask)`` of the local ``path`` (a link not
    followed): which attributes it has, and which its filesystem reports; None where this
    system has no statx; OSError where the call fails."""
    import ctypes

    try:
        call = _libc().statx
    except (AttributeError, OSError):
        return None
    buf = ctypes.create_string_buffer(256)  # struct statx
    if call(-100, os.fsencode(path), 0x100, 0, buf) != 0:  # AT_FDCWD, AT_SYMLINK_NOFOLLOW
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    raw = buf.raw
    return (int.from_bytes(raw[8:16], sys.byteorder), int.from_bytes(raw[56:64], sys.byteorder))


def mount_id(path: str) -> int:
    """The id of the mount the local ``path`` lies on (a link not followed), as
    ``name_to_handle_at`` gives it: a folder bound over another of the same filesystem has
    its own, where ``st_dev`` is the same. OSError where the call fails (a filesystem without
    file handles: EOPNOTSUPP) or this system has none. An overlayfs (a container's root)
    gives handles only to identify a file (``AT_HANDLE_FID``, Linux 6.5), not to open one:
    asked for those, where the first call is refused EOPNOTSUPP (there it was, and a fresh
    TIFF run left its working store as before)."""
    import ctypes

    call = getattr(_libc(), "name_to_handle_at", None)
    if call is None:
        raise OSError(errno.ENOSYS, "this system has no name_to_handle_at", path)
    code = 0
    for flags in (0, 0x200):  # AT_HANDLE_FID
        handle = ctypes.create_string_buffer(8 + 128)  # struct file_handle, MAX_HANDLE_SZ
        handle[0:4] = (128).to_bytes(4, sys.byteorder)
        found = ctypes.c_int(0)
        if call(-100, os.fsencode(path), handle, ctypes.byref(found), flags) == 0:  # AT_FDCWD
            return found.value
        if code == 0:  # (the first call's error is the one to tell)
            code = ctypes.get_errno()
        if code != errno.EOPNOTSUPP:
            break
    raise OSError(code, os.strerror(code), path)


def permission_missing(path: str) -> str:
    """What this user may not do to the local ``path`` (or the first folder above it that it
    may not enter), for a one-line message: ``may not read '/p' (a file owned by ...)``."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):  # a folder on the way that this user may not enter
        above = os.sep.join(parts[:i]) or os.sep
        if os.path.isdir(above) and not os.access(above, os.X_OK):
            return f"may not enter the folder {above!r} ({owner_and_mode(os.stat(above), above)})"
    try:
        st = os.stat(path)
    except OSError:
        parent = os.path.dirname(path)
        if os.path.isdir(parent) and not os.access(parent, os.W_OK):  # mkdir, open(.., "w")
            if read_only_mount(parent):
                return f"may not create {os.path.basename(path)!r} in {parent!r}: {_READ_ONLY}"
            folder = f"the folder {parent!r} ({owner_and_mode(os.stat(parent), parent)})"
            return f"may not create {os.path.basename(path)!r} in {folder}"
        return f"may not reach {path!r}"
    kind = "folder" if os.path.isdir(path) else "file"
    if not os.access(path, os.R_OK):
        doing = "list the folder" if kind == "folder" else "read the file"
    elif kind == "folder" and not os.access(path, os.X_OK):
        doing = "enter the folder"
    elif not os.access(path, os.W_OK):
        if read_only_mount(path):  # (its owner and mode say nothing of why)
            return f"may not write {path!r}: {_READ_ONLY}"
        doing = f"write the {kind}"
    elif not os.access(os.path.dirname(path), os.W_OK):  # a rename or removal of path
        parent = os.path.dirname(path)
        if read_only_mount(parent):
            return f"may not change the folder {parent!r}: {_READ_ONLY}"
        return (
            f"may not change the folder {parent!r} ({owner_and_mode(os.stat(parent), parent)}), "
            f"which holds {os.path.basename(path)!r}"
        )
    else:
        return f"was refused access to {path!r} ({owner_and_mode(st, path)})"
    return f"may not {doing} {path!r} ({owner_and_mode(st, path)})"


def sticky_keeps(folder: os.stat_result, owner: int) -> bool:
    """Whether the sticky bit of ``folder`` (a /tmp-like shared folder) keeps this user from
    removing or renaming an entry of it owned by ``owner`` (os.access says "writable"): only
    the entry's owner, the folder's, or a process with CAP_FOWNER over that owner may, that is
    one mapped in its user namespace (a rootless container's root, all capabilities its own,
    is refused a host user's file there, which it sees owned by nobody)."""
    import stat

    if not folder.st_mode & stat.S_ISVTX or os.geteuid() in (owner, folder.st_uid):
        return False
    if os.geteuid() != 0:  # (CAP_FOWNER is root's: a user's process has none)
        return True
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            caps = next((line.split()[1] for line in fh if line.startswith("CapEff:")), "0")
        if not int(caps, 16) & (1 << 3):  # CAP_FOWNER
            return True
        with open("/proc/self/uid_map", encoding="ascii") as fh:
            ranges = [tuple(map(int, line.split()[::2])) for line in fh if line.strip()]
        if ranges != [(0, 0xFFFFFFFF)] and owner == _overflow_uid():
            # an owner not mapped here is seen as the overflow uid, which the map may cover
            # too (podman's 1-65536): taken for unmapped (the run computed it all, then failed
            # "Operation not permitted"); the container's own nobody rarely owns an output
            return True
        return not any(first <= owner < first + count for first, count in ranges)
    except (OSError, ValueError):  # (no /proc: root's CAP_FOWNER is taken for granted)
        return False


def _overflow_uid() -> int:
    """The uid a file whose owner is not mapped in this user namespace is seen owned by."""
    try:
        with open("/proc/sys/kernel/overflowuid", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 65534
