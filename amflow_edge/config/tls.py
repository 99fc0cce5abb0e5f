"""The broker's TLS files, checked the way the daemon uses them, and as the user the daemon runs as.

`check-config` and `run` must agree: a CA file that is no certificate, a key that is not the
certificate's, or a file the service user may not read would otherwise pass the check and
fail the start with exit 1, which systemd answers with a restart loop. So the check loads the
files exactly as the MQTT client does (`load_verify_locations`, `load_cert_chain`), and the
client builds its context with the same function, so both say the same words. The check
usually runs as root, who reads everything; it therefore also works out from the permission
bits whether the service user could read each file.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import ssl
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from amflow_edge.config.station import TlsSettings

SERVICE_USER = "amflow-edge"
"""The unit's `User=` (systemd/amflow-edge.service, created by amflow-edge.sysusers.conf): whose reading counts."""

_ACL_XATTR = "system.posix_acl_access"


class TlsFileError(ValueError):
    """A TLS file the client cannot use; the message names the setting, the file, the reason and the fix."""


class _EncryptedKeyError(Exception):
    """OpenSSL asked for a pass phrase: the daemon has none to give, and must never wait at a prompt for one."""


def _no_pass_phrase() -> str:
    raise _EncryptedKeyError


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words ('KEY_VALUES_MISMATCH' → 'key values mismatch'), without the C source location."""
    if exc.reason:
        return exc.reason.replace("_", " ").lower()
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", exc.strerror or str(exc))


def _not_a_file(setting: str, path: Path, expected: str) -> str | None:
    """Whether the path names no regular file, said as such: a directory is not 'no file'."""
    where = f"mqtt.tls.{setting}: expected {expected}"
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"{where} (found no file at {path}); fix the path"
    except OSError as exc:
        return _unreadable(setting, path, exc)
    if stat.S_ISDIR(mode):
        return f"{where} (found a directory at {path}); name the file in it"
    if not stat.S_ISREG(mode):
        return f"{where} (found no regular file at {path}); fix the path"
    return None


def _unreadable(setting: str, path: Path, exc: OSError) -> str:
    return (
        f"mqtt.tls.{setting}: expected a file this process can read (found {path}: {exc.strerror or exc}); "
        "fix its permissions"
    )


def _load(context: ssl.SSLContext, tls: TlsSettings) -> list[str]:
    """Load the files into `context` as the MQTT client does, saying for each failure which file and why."""
    problems: list[str] = []
    if tls.ca_file is not None:
        problem = _not_a_file("ca_file", tls.ca_file, "a PEM CA certificate file")
        if problem is None:
            try:
                context.load_verify_locations(cafile=str(tls.ca_file))
            except ssl.SSLError as exc:
                found = (
                    f"no certificate in {tls.ca_file}"
                    if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND"
                    else f"{tls.ca_file}: {_ssl_reason(exc)}"
                )
                problem = (
                    f"mqtt.tls.ca_file: expected a PEM CA certificate (found {found}); "
                    "point it at the CA that signed the broker's certificate"
                )
            except OSError as exc:
                problem = _unreadable("ca_file", tls.ca_file, exc)
        if problem is not None:
            problems.append(problem)
    if tls.cert_file is not None and tls.key_file is not None:
        problem = _chain_problem(context, tls.cert_file, tls.key_file)
        if problem is not None:
            problems.append(problem)
    return problems


def _chain_problem(context: ssl.SSLContext, cert: Path, key: Path) -> str | None:
    """OpenSSL says 'PEM lib' for a bad certificate and a bad key alike; the certificate is read on its own first
    so the message can name the file that is wrong."""
    problem = _not_a_file("cert_file", cert, "the station's PEM client certificate file") or _not_a_file(
        "key_file", key, "a PEM private key file"
    )
    if problem is not None:
        return problem
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        found = "no certificate" if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND" else _ssl_reason(exc)
        return (
            f"mqtt.tls.cert_file: expected the station's PEM client certificate (found {found} in {cert}); "
            "point it at the certificate the broker knows the station by"
        )
    except OSError as exc:
        return _unreadable("cert_file", cert, exc)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=_no_pass_phrase)
    except _EncryptedKeyError:
        return (
            f"mqtt.tls.key_file: expected an unencrypted PEM private key (found an encrypted key in {key}); "
            f"the station has no pass phrase to give: openssl pkey -in {key} -out NEW_KEY, and point key_file there"
        )
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return (
                f"mqtt.tls.key_file: expected the private key of {cert} (found the key of another certificate "
                f"in {key}); use the key the certificate was issued for"
            )
        found = f"no PEM private key in {key}" if exc.reason is None else f"{key}: {_ssl_reason(exc)}"
        return (
            f"mqtt.tls.key_file: expected the PEM private key of {cert} (found {found}); "
            "point it at the key the certificate was issued for"
        )
    except OSError as exc:
        return _unreadable("key_file", key, exc)
    return None


def tls_context_for(tls: TlsSettings, error: Callable[[str], Exception] = TlsFileError) -> ssl.SSLContext:
    """The client's TLS context, verifying the broker against ca_file (or the system's CAs).

    `error` lets a caller keep raising its own exception type (the MQTT client's MqttSetupError), so the
    handlers that already catch that type keep working.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    problems = _load(context, tls)
    if problems:
        raise error("; ".join(problems))
    return context


# --- as the service user ------------------------------------------------------------------------------------------


def _may(st: os.stat_result, uid: int, gids: set[int], bits: tuple[int, int, int]) -> bool:
    """The kernel's rule: the owner class alone decides for the owner, the group class for group members."""
    owner, group, other = bits
    if st.st_uid == uid:
        return bool(st.st_mode & owner)
    if st.st_gid in gids:
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def _has_acl(path: Path) -> bool:
    """An access ACL may grant what the bits deny; such a file is not judged by its bits."""
    try:
        return _ACL_XATTR in os.listxattr(path)
    except OSError:
        return False


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _directories(path: Path) -> Iterator[Path]:
    """Every directory the kernel walks to reach the file: those of the path as written and, through any
    symbolic links, those of the file it names."""
    seen: set[Path] = set()
    for target in (Path(os.path.abspath(path)), path.resolve()):
        for directory in reversed(target.parents):
            if directory not in seen:
                seen.add(directory)
                yield directory


def _service_user_problem(setting: str, path: Path, user: pwd.struct_passwd) -> str | None:
    uid = user.pw_uid
    gids = set(os.getgrouplist(user.pw_name, user.pw_gid))
    try:
        group = grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        group = str(user.pw_gid)
    name = user.pw_name
    expected = f"mqtt.tls.{setting}: expected a file the service user {name!r} can read"
    for directory in _directories(path):
        try:
            st = directory.stat()
        except OSError:
            return None  # this process could not look either; loading the file has said so
        if not _has_acl(directory) and not _may(st, uid, gids, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
            return (
                f"{expected} (found {path} in the directory {directory}, mode {stat.S_IMODE(st.st_mode):04o}, "
                f"owner {_owner(st)}, which {name!r} cannot enter); chmod o+x {directory}, or "
                f"chgrp {group} {directory} && chmod g+x {directory}, or move the file"
            )
    target = path.resolve()
    try:
        st = target.stat()
    except OSError:
        return None
    if _has_acl(target) or _may(st, uid, gids, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
        return None
    return (
        f"{expected} (found {path}, mode {stat.S_IMODE(st.st_mode):04o}, owner {_owner(st)}); "
        f"chgrp {group} {target} && chmod g+r {target}"
    )


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The service user, when its reading must be worked out: not when it does not exist here (this process's
    own reading is all there is to check), nor when this process is that user (loading the files was the test)."""
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        return None
    if user.pw_uid in (0, os.geteuid()):
        return None
    return user


def tls_problems(tls: TlsSettings, service_user: str | None = None) -> list[str]:
    """Every reason the MQTT client could not use these files, as the service user (default SERVICE_USER)."""
    problems = _load(ssl.create_default_context(ssl.Purpose.SERVER_AUTH), tls)
    user = _service_user(service_user or SERVICE_USER)
    if user is None:
        return problems
    for setting, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is not None and not any(p.startswith(f"mqtt.tls.{setting}:") for p in problems):
            problem = _service_user_problem(setting, path, user)
            if problem is not None:
                problems.append(problem)
    return problems
