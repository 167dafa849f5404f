"""Assembles the root of the fieldgate images in the build stage of compose/image.Dockerfile.

Runs on the build stage's own python3 (the machine's platform) with the standard library only,
and never runs a program of the target platform: so the arm64 images are assembled on an x86_64
host without emulation. Two verbs:

`shared`  -> OUT/runtime (a root: the interpreter, the shared libraries it and the extension
            modules link, the part of the standard library fieldgate and its packages import,
            /etc/passwd with the fieldgate user, the CA bundle, the state directories) and
            OUT/core/opt/fieldgate/core (fieldgate and its core dependencies). The same for all
            three images, so Docker's build cache gives all three the same two lower layers.
`extra`   -> OUT/extra/opt/fieldgate/extra: what one image's extra adds over the core
            (pymodbus, asyncua...).

Each tree is copied to / of the image, every directory included: a directory that Docker's COPY
would create itself gets the time of that build, and the layer would differ from the one the
other two images have.

The standard library kept is computed, not listed: the native packages of every image are
installed, each entry point is run with --help and every module of every package is imported;
each top-level stdlib module or package that ends up in sys.modules is kept whole (a lazily
imported submodule of a kept package is there too), plus SAFETY below. The extension modules of
lib-dynload are all kept (3 MB) except those for desktops and tests.
"""

from __future__ import annotations

import argparse
import compileall
import os
import py_compile
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
MACHINE = {"amd64": 62, "arm64": 183}  # ELF e_machine
# glibc of Debian bookworm is 2.36: any manylinux wheel up to that runs on the base.
MANYLINUX = [f"manylinux_2_{minor}" for minor in range(36, 16, -1)] + ["manylinux2014"]
ENTRY_POINTS = ["collectors.modbus", "collectors.opcua", "collectors.forwarder"]
# The HEALTHCHECK of every image (and of the compose file) runs `python3 -c` with this import.
HEALTHCHECK_IMPORTS = ["os", "urllib.request"]
# Kept whatever the scan says: modules a field gateway may reach only at runtime (codecs looked
# up by name, TLS to the broker, time zones, tracebacks that read source lines, subprocesses).
SAFETY = {
    "encodings", "codecs", "stringprep", "unicodedata", "ssl", "_ssl", "hashlib", "_hashlib", "hmac",
    "secrets", "base64", "binascii", "zoneinfo", "_zoneinfo", "sqlite3", "_sqlite3", "json", "_json",
    "asyncio", "concurrent", "logging", "email", "http", "urllib", "importlib", "collections", "uuid",
    "_uuid", "decimal", "_decimal", "zlib", "bz2", "_bz2", "lzma", "_lzma", "gzip",
    "zipfile", "socket", "_socket", "select", "selectors", "signal", "termios", "fcntl", "tty", "pty",
    "subprocess", "_posixsubprocess", "locale", "gettext", "traceback", "linecache", "tokenize", "token",
    "pickle", "_pickle", "_compat_pickle", "struct", "array", "math", "random", "datetime", "_datetime",
    "_strptime", "calendar", "queue", "heapq", "bisect", "contextvars", "weakref", "typing", "dataclasses",
    "enum", "inspect", "dis", "opcode", "ast", "platform", "sysconfig", "shlex", "shutil", "tempfile",
    "glob", "fnmatch", "pathlib", "ipaddress", "getpass", "resource", "mmap", "runpy", "pkgutil",
    "warnings", "threading", "csv", "string", "textwrap", "copy", "pprint", "argparse", "ctypes",
    "faulthandler", "site", "sitecustomize", "_sitebuiltins", "os", "io", "abc", "types", "functools",
    "operator", "re", "sre_compile", "sre_parse", "sre_constants", "stat", "posixpath", "genericpath",
    "_collections_abc", "_weakrefset", "keyword", "reprlib", "copyreg", "numbers", "quopri",
    "mimetypes", "_threading_local",
}
# Never kept: a desktop, a test suite, a second installer.
EXCLUDED = {"test", "idlelib", "tkinter", "turtledemo", "turtle", "lib2to3", "ensurepip", "venv",
            "distutils", "pydoc_data", "pydoc", "site-packages", "dist-packages", "__pycache__", "curses",
            "dbm", "unittest", "doctest"}
EXCLUDED_DYNLOAD = ("_tkinter", "_test", "_ctypes_test", "xxlimited", "_xxtestfuzz", "_xxsubinterpreters",
                    "_curses", "readline", "_dbm", "_gdbm", "nis", "ossaudiodev", "audioop", "_crypt")
TEST_DIRS = {"test", "tests", "idle_test", "__pycache__"}
DATA_DIRS = ("var/lib/fieldgate/state", "var/lib/fieldgate/buffer", "run/fieldgate")
UID = 10001


class Fail(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"rootfs: {message}")


# ---------------------------------------------------------------------------------- paths


def first_link(root: Path, path: str) -> tuple[str, str, str] | None:
    """The first symlink on PATH inside ROOT: (where it is, what it holds, PATH with it followed);
    None when PATH has none."""
    parts = [p for p in path.split("/") if p]
    current = "/"
    for index, part in enumerate(parts):
        step = os.path.join(current, part)
        if Path(str(root) + step).is_symlink():
            link = os.readlink(str(root) + step)
            target = link if link.startswith("/") else os.path.normpath(os.path.join(current, link))
            rest = "/".join(parts[index + 1:])
            return step, link, target + ("/" + rest if rest else "")
        current = step
    return None


def replicate(root: Path, out: Path, path: str, depth: int = 0) -> str:
    """Copy ROOT/path to OUT/path, recreating each symlink met on the way; returns the real path."""
    found = first_link(root, path)
    if found is not None:
        if depth > 40:
            raise Fail(f"{path}: too many levels of symbolic links in the base image")
        step, link, followed = found
        made = Path(str(out) + step)
        if not made.is_symlink() and not made.exists():
            made.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link, made)
        return replicate(root, out, followed, depth + 1)
    current = os.path.normpath("/" + path)
    source, made = Path(str(root) + current), Path(str(out) + current)
    if source.is_dir():
        made.mkdir(parents=True, exist_ok=True)
    elif not made.exists():
        if not source.exists():
            raise Fail(f"{current} is not in the base image's root")
        made.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, made)
    return current


def real(root: Path, path: str, depth: int = 0) -> str | None:
    """PATH inside ROOT with every symlink followed inside ROOT; None when it does not exist."""
    found = first_link(root, path)
    if found is not None:
        return real(root, found[2], depth + 1) if depth <= 40 else None
    current = os.path.normpath("/" + path)
    return current if Path(str(root) + current).exists() else None


# ------------------------------------------------------------------------------------ ELF


def elf(path: Path) -> tuple[int, str | None, list[str], list[str]] | None:
    """(machine, PT_INTERP, DT_NEEDED, DT_RUNPATH/RPATH) of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    if data[4] != 2 or data[5] != 1:
        raise Fail(f"{path}: only 64-bit little-endian ELF files are supported")
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads: list[tuple[int, int, int]] = []
    dynamic = None
    interp = None
    for index in range(phnum):
        kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + index * phentsize)
        if kind == 1:
            loads.append((vaddr, offset, filesz))
        elif kind == 2:
            dynamic = (offset, filesz)
        elif kind == 3:
            interp = data[offset:offset + filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return machine, interp, [], []
    entries: list[tuple[int, int]] = []
    strtab = None
    for at in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, at)
        if tag == 0:
            break
        if tag == 5:
            strtab = value
        entries.append((tag, value))
    base = next((off + strtab - va for va, off, size in loads if strtab is not None and va <= strtab < va + size),
                None)
    if base is None:
        raise Fail(f"{path}: no string table in its dynamic section")

    def text(at: int) -> str:
        return data[base + at:data.index(b"\0", base + at)].decode()

    needed = [text(value) for tag, value in entries if tag == 1]
    runpath = [p for tag, value in entries if tag in (15, 29) for p in text(value).split(":") if p]
    return machine, interp, needed, runpath


SECTION = "<IIQQQQIIQQ"  # Elf64_Shdr: name type flags addr offset size link info addralign entsize


def strip_debug(path: Path) -> int:
    """Drop the .debug_* sections of a 64-bit ELF file, as `strip --strip-debug` does; bytes saved.

    Some wheels ship their extension modules with debug info (pyyaml's _yaml: 2.4 of 2.7 MB).
    The loader maps segments only and every debug section lies after the last segment, so the
    bytes it maps stay the same: the sections after the last segment are packed again, the
    debug ones become NOBITS (kept in the table, so no section index changes), and the section
    table is written anew. Anything unusual (a debug section inside a segment) is left as is."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return 0
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 54)
    if shoff == 0 or shnum == 0 or shstrndx >= shnum or shentsize != struct.calcsize(SECTION):
        return 0
    end = max(64, phoff + phentsize * phnum)
    for index in range(phnum):
        _, _, offset, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + index * phentsize)
        end = max(end, offset + filesz)
    sections = [list(struct.unpack_from(SECTION, data, shoff + i * shentsize)) for i in range(shnum)]
    names = sections[shstrndx][4]

    def name(section: list[int]) -> bytes:
        start = names + section[0]
        return data[start:data.index(b"\0", start)]

    nobits, alloc = 8, 2
    drop = {i for i, sec in enumerate(sections)
            if name(sec).startswith(b".debug") and not sec[2] & alloc and sec[1] != nobits}
    if not drop or shoff < end:
        return 0
    for sec in sections:  # nothing may straddle the end of the mapped part
        if sec[1] != nobits and sec[5] and sec[4] < end < sec[4] + sec[5]:
            return 0
    if any(sections[i][4] < end for i in drop):
        return 0
    out = bytearray(data[:end])
    later = sorted((i for i, sec in enumerate(sections) if sec[1] != nobits and sec[5] and sec[4] >= end),
                   key=lambda i: sections[i][4])
    for i in later:
        sec = sections[i]
        if i in drop:
            sec[1], sec[4] = nobits, len(out)
            continue
        out += b"\0" * (-len(out) % max(sec[8], 1))
        chunk = data[sec[4]:sec[4] + sec[5]]
        sec[4] = len(out)
        out += chunk
    out += b"\0" * (-len(out) % 8)
    struct.pack_into("<Q", out, 40, len(out))
    for sec in sections:
        out += struct.pack(SECTION, *sec)
    if len(out) >= len(data):
        return 0
    mode = path.stat().st_mode
    path.write_bytes(out)
    os.chmod(path, mode)
    return len(data) - len(out)


def strip_tree(tree: Path) -> int:
    """strip_debug on every extension module and library a package brought; bytes saved."""
    return sum(strip_debug(p) for p in tree.rglob("*.so*") if p.is_file() and not p.is_symlink())


def link_closure(root: Path, out: Path, files: list[tuple[Path, str]], arch: str) -> list[str]:
    """Copy every shared library the ELF files need from ROOT into OUT (with the loader).

    `files` are (where the file is now, its path in the final image). A library found beside
    a package (RUNPATH with $ORIGIN) ships with that package and is not copied."""
    triplet = TRIPLET[arch]
    system = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib", "/usr/local/lib"]
    copied: list[str] = []
    seen: set[str] = set()
    queue = list(files)
    while queue:
        local, final = queue.pop()
        info = elf(local)
        if info is None:
            continue
        machine, interp, needed, runpath = info
        if machine != MACHINE[arch]:
            raise Fail(f"{final} is built for ELF machine {machine}, not {arch}")
        if interp and interp not in seen:
            seen.add(interp)
            copied.append(replicate(root, out, interp))
        origin = os.path.dirname(final)
        here = os.path.dirname(str(local))
        beside = [p.replace("${ORIGIN}", here).replace("$ORIGIN", here) for p in runpath if "ORIGIN" in p]
        for name in needed:
            if any(Path(p, name).exists() for p in beside):
                continue  # e.g. cryptography/../cffi.libs: part of the package's own layer
            if name in seen:
                continue
            dirs = [p for p in runpath if "ORIGIN" not in p] + system
            found = next((d + "/" + name for d in dirs if real(root, d + "/" + name)), None)
            if found is None:
                raise Fail(f"{final} needs {name}, which is in no library directory of the base image "
                           f"({', '.join(dirs)}); origin {origin}")
            seen.add(name)
            path = replicate(root, out, found)
            copied.append(path)
            queue.append((Path(str(out) + path), path))
    return copied


# ------------------------------------------------------------------------------------ pip


def pip_command() -> list[str]:
    """A pip for the build stage: python:3.11-slim has one; Debian's python3 makes one in a venv."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [sys.executable, "-m", "pip"]
    venv = Path(tempfile.gettempdir()) / "pip-venv"
    if not (venv / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return [str(venv / "bin" / "pip")]


def pip_install(wheels: Path, target: Path, requirement: str, arch: str | None) -> None:
    """`pip install --target` from WHEELS only; ARCH: the wheels of that platform, run nowhere here."""
    command = [*pip_command(), "install", "--quiet", "--no-index", "--find-links", str(wheels),
               "--target", str(target), "--no-compile", "--disable-pip-version-check", "--no-warn-script-location"]
    if arch is not None:
        machine = TRIPLET[arch].split("-")[0]
        command += ["--only-binary=:all:", "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
                    "--implementation", "cp"]
        for tag in MANYLINUX:
            command += ["--platform", f"{tag}_{machine}"]
    subprocess.run([*command, requirement], check=True)
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts: the images run `python3 -m`


def compile_tree(tree: Path, final: str) -> None:
    """.pyc beside every source, recorded as seen at FINAL: checked never (the root is read-only and
    immutable), so no source timestamp matters and nothing is compiled at start."""
    ok = compileall.compile_dir(str(tree), ddir=final, quiet=2, workers=0,
                                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:
        print(f"rootfs: some files under {final} do not compile (left as source)", file=sys.stderr)


# ------------------------------------------------------------------------------ the scan

SCAN = r"""
import contextlib, importlib, io, pkgutil, runpy, sys, sysconfig
sys.dont_write_bytecode = True
entry_points, healthcheck, root, report, safety, excluded = sys.argv[1:7]
for name in healthcheck.split(","):
    if name:
        importlib.import_module(name)
for name in entry_points.split(","):
    sys.argv = [name, "--help"]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
failed = []
packages = {}
for module in pkgutil.iter_modules([root]):
    try:
        packages[module.name] = importlib.import_module(module.name)
    except Exception as exc:
        failed.append(f"{module.name}: {exc!r}")
with open(report + ".run", "w") as file:
    file.write("\n".join(sorted(sys.modules)))
for name, package in packages.items():
    if hasattr(package, "__path__"):
        for sub in pkgutil.walk_packages(package.__path__, name + ".", onerror=lambda name: None):
            if sub.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(sub.name)
            except BaseException as exc:
                failed.append(f"{sub.name}: {exc!r}")
# A stdlib package is kept whole, so whatever its submodules import must be there too
# (logging.config imports socketserver): walk each one met, until no new one turns up.
stdlib = sysconfig.get_paths()["stdlib"]
safety, excluded = set(safety.split(",")), set(excluded.split(","))
walked = set()
while True:
    tops = {name.split(".")[0] for name in list(sys.modules)} | safety
    todo = sorted(t for t in tops - walked - excluded
                  if getattr(sys.modules.get(t), "__path__", None)
                  and str(list(sys.modules[t].__path__)[0]).startswith(stdlib))
    todo += sorted(t for t in safety - walked - excluded - set(sys.modules))
    if not todo:
        break
    for top in todo:
        walked.add(top)
        try:
            package = importlib.import_module(top)
        except BaseException as exc:
            failed.append(f"{top}: {exc!r}")
            continue
        for sub in pkgutil.walk_packages(getattr(package, "__path__", []), top + ".", onerror=lambda name: None):
            if set(sub.name.split(".")) & (excluded | {"__main__"}):
                continue
            try:
                importlib.import_module(sub.name)
            except BaseException as exc:
                failed.append(f"{sub.name}: {exc!r}")
sys.stderr.write("\n".join(failed) + ("\n" if failed else ""))
with open(report, "w") as file:
    file.write("\n".join(sorted(sys.modules)))
"""


def scan(packages: Path) -> tuple[set[str], set[str]]:
    """Top-level names of the modules in sys.modules: after running each entry point and importing
    each package of PACKAGES (needed: kept whatever they are), then after importing every module
    of every package (kept unless EXCLUDED: a package's test helpers may import unittest)."""
    env = {**os.environ, "PYTHONPATH": str(packages), "PYTHONDONTWRITEBYTECODE": "1"}
    report = packages / "modules.txt"
    result = subprocess.run(
        [sys.executable, "-c", SCAN, ",".join(ENTRY_POINTS), ",".join(HEALTHCHECK_IMPORTS), str(packages),
         str(report), ",".join(sorted(SAFETY)), ",".join(sorted(EXCLUDED))],
        capture_output=True, text=True, env=env, cwd="/", timeout=600,
    )
    if result.returncode != 0:
        raise Fail(f"the import scan failed:\n{result.stderr[-3000:]}")
    skipped = [line for line in result.stderr.splitlines() if line.strip()]
    if skipped:
        print(f"rootfs: {len(skipped)} modules could not be imported in the scan (optional "
              f"dependencies), e.g. {skipped[:3]}", file=sys.stderr)
    run = {name.split(".")[0] for name in Path(str(report) + ".run").read_text().split()}
    return run, {name.split(".")[0] for name in report.read_text().split()}


# ----------------------------------------------------------------------------- the verbs


def prefix_of(root: Path) -> str:
    """/usr/local for python:3.11-slim (built from source), /usr for Debian's python3."""
    for prefix in ("/usr/local", "/usr"):
        if real(root, f"{prefix}/bin/python3"):
            return prefix
    raise Fail("the base image has no python3 in /usr/local/bin or /usr/bin")


def shared(args: argparse.Namespace) -> None:
    root, out, wheels = Path(args.target), Path(args.out), Path(args.wheels)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    prefix = prefix_of(root)
    stdlib = f"{prefix}/lib/{version}"
    if not real(root, stdlib + "/os.py"):
        raise Fail(f"the base image has no {stdlib}/os.py: its python3 is not {version} like the build stage's")
    runtime, core = out / "runtime", out / "core" / "opt" / "fieldgate" / "core"
    shutil.rmtree(out, ignore_errors=True)
    runtime.mkdir(parents=True)

    # 1. What fieldgate imports: the machine's own wheels of all three images, run and imported.
    scan_dir = Path(tempfile.mkdtemp(prefix="scan-"))
    pip_install(wheels / args.build_arch, scan_dir, f"fieldgate[{args.extras}]", None)
    needed, imported = scan(scan_dir)
    needed |= SAFETY
    shutil.rmtree(scan_dir)

    # 2. The interpreter and the standard library it needs, from the target root.
    interpreter = [replicate(root, runtime, f"{prefix}/bin/python3")]
    kept, dropped = [], []
    real_stdlib = real(root, stdlib)
    assert real_stdlib
    for entry in sorted(Path(str(root) + real_stdlib).iterdir()):
        name = entry.name.removesuffix(".py")
        if entry.name == "lib-dynload" or (name in EXCLUDED and name not in needed):
            continue
        if name in needed or name in imported or name.startswith(("_sysconfigdata", "__future__")):
            kept.append(name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, Path(str(runtime) + real_stdlib + "/" + entry.name), symlinks=False,
                                ignore=shutil.ignore_patterns(*TEST_DIRS, "*.pyc", "*.exe"))
            else:
                replicate_file(root, runtime, real_stdlib + "/" + entry.name)
        elif entry.suffix == ".py" or entry.is_dir():
            dropped.append(name)
    dynload = real(root, stdlib + "/lib-dynload")
    extensions = []
    if dynload:
        for entry in sorted(Path(str(root) + dynload).iterdir()):
            if entry.name.startswith(EXCLUDED_DYNLOAD) or not entry.name.endswith(".so"):
                continue
            extensions.append(replicate(root, runtime, dynload + "/" + entry.name))

    # 3. The core packages (target platform) and every package's extension modules for the closure.
    target_all = Path(tempfile.mkdtemp(prefix="all-"))
    pip_install(wheels / args.arch, target_all, f"fieldgate[{args.extras}]", args.arch)
    pip_install(wheels / args.arch, core, "fieldgate", args.arch)
    objects = [(Path(str(runtime) + p), p) for p in [*interpreter, *extensions]]
    real_interpreter = real(root, f"{prefix}/bin/python3")
    assert real_interpreter
    objects.append((Path(str(runtime) + real_interpreter), real_interpreter))
    objects += [(p, "/opt/fieldgate/" + str(p.relative_to(target_all))) for p in target_all.rglob("*.so*")
                if p.is_file()]
    libraries = link_closure(root, runtime, objects, args.arch)
    shutil.rmtree(target_all)
    if real(root, "/etc/ld.so.cache"):
        replicate(root, runtime, "/etc/ld.so.cache")
    for top in ("lib", "lib64", "bin", "sbin"):  # merged /usr: /lib -> usr/lib, as in the base
        if Path(root, top).is_symlink() and not Path(runtime, top).is_symlink():
            os.symlink(os.readlink(Path(root, top)), Path(runtime, top))

    # 4. /etc and the directories the compose file mounts volumes on.
    etc = runtime / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                f"fieldgate:x:{UID}:{UID}::/nonexistent:/usr/sbin/nologin\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nfieldgate:x:{UID}:\nnogroup:x:65534:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    bundle = real(root, "/etc/ssl/certs/ca-certificates.crt")
    if bundle:
        (etc / "ssl" / "certs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(str(root) + bundle), etc / "ssl" / "certs" / "ca-certificates.crt")
    else:
        print("rootfs: the base image has no /etc/ssl/certs/ca-certificates.crt: MQTT over TLS will need "
              "tls.ca_file", file=sys.stderr)
    (etc / "fieldgate").mkdir()
    (runtime / "tmp").mkdir(mode=0o1777)
    os.chmod(runtime / "tmp", 0o1777)
    for directory in DATA_DIRS:
        (runtime / directory).mkdir(parents=True)
        os.chown(runtime / directory, UID, UID)
    (runtime / "opt" / "fieldgate").mkdir(parents=True)

    # Debian's binaries come stripped; a python built from source may not be (libpython: 20 MB).
    stripped = strip_tree(runtime) + strip_tree(core)
    compile_tree(Path(str(runtime) + real_stdlib), real_stdlib)
    compile_tree(core, "/opt/fieldgate/core")
    print(f"rootfs: {prefix}/bin/python3, {len(kept)} stdlib modules kept, {len(dropped)} left out "
          f"({', '.join(dropped[:12])}...), {len(extensions)} extension modules, {len(libraries)} libraries; "
          f"{stripped} bytes of debug info dropped",
          file=sys.stderr)


def replicate_file(root: Path, out: Path, path: str) -> None:
    """A file of the standard library as a plain file (Debian links sitecustomize.py to /etc)."""
    found = real(root, path)
    if found is None:
        return  # a dangling link: nothing to keep
    made = Path(str(out) + path)
    made.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(str(root) + found), made)


def extra(args: argparse.Namespace) -> None:
    """OUT/extra: what `fieldgate[EXTRA]` installs beyond OUT/core (same wheels, same versions)."""
    out, wheels, core = Path(args.out), Path(args.wheels), Path(args.core)
    extra_dir = out / "extra" / "opt" / "fieldgate" / "extra"
    shutil.rmtree(extra_dir, ignore_errors=True)
    extra_dir.mkdir(parents=True)
    if not args.extra:
        return
    full = Path(tempfile.mkdtemp(prefix="full-"))
    pip_install(wheels / args.arch, full, f"fieldgate[{args.extra}]", args.arch)
    present = {p.name for p in core.iterdir()}
    for entry in full.iterdir():
        if entry.name not in present:
            shutil.move(str(entry), extra_dir / entry.name)
    shutil.rmtree(full)
    strip_tree(extra_dir)
    compile_tree(extra_dir, "/opt/fieldgate/extra")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    s = verbs.add_parser("shared")
    s.add_argument("--target", required=True, help="the base image's root (the target platform)")
    s.add_argument("--extras", required=True, help="every image's extra, comma-separated")
    e = verbs.add_parser("extra")
    e.add_argument("--extra", default="")
    e.add_argument("--core", required=True)
    for p in (s, e):
        p.add_argument("--wheels", required=True, help="WHEELS/ARCH holds each platform's wheels")
        p.add_argument("--arch", required=True, choices=sorted(TRIPLET))
        p.add_argument("--build-arch", required=True, choices=sorted(TRIPLET))
        p.add_argument("--out", required=True)
    args = parser.parse_args()
    shared(args) if args.verb == "shared" else extra(args)


if __name__ == "__main__":
    main()
