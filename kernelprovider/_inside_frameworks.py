# ruff: noqa: UP010, UP031
"""What the Python frameworks inside an image were built for, read from their own files.

This module is run in two ways, with the same code:

* inside a SIF image, as ``python3 -c SOURCE`` (the source of this file) through
  ``apptainer exec``: :mod:`kernelprovider.image` does that once per image and caches the answer;
* on this host for a sandbox directory image, by :func:`scan` with the directory as ``root``.

So it must run on the oldest Python an image may carry: Python 3.5 (and 2.7 where cheap), stdlib
only, no f-strings, no annotations. It only reads: a few small text files
(``torch/version.py``, ``tensorflow/python/platform/build_info.py``, dist-info names) and, of the
frameworks' CUDA libraries, the ELF section headers and the per-entry headers of the
``.nv_fatbin`` section (with seeks: ``libtorch_cuda.so`` is about 1 GB and is never read whole).

Output (``main``): one JSON object on stdout,
``{"frameworks": [...], "cudart": [...], "errors": [...]}``; see :func:`scan`.
"""

from __future__ import print_function

import glob
import json
import os
import re
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND_PTX = 1
FATBIN_KIND_ELF = 2
# Enough for the largest libraries seen (libtorch_cuda.so: a few 10k entries); a cap so that a
# damaged section cannot keep the scan busy.
MAX_ENTRIES = 500000

SITE_PATTERNS = (
    "/usr/local/lib/python*/dist-packages",
    "/usr/local/lib/python*/site-packages",
    "/usr/lib/python*/dist-packages",
    "/usr/lib/python*/site-packages",
    "/usr/local/lib64/python*/site-packages",
    "/usr/lib64/python*/site-packages",
    "/opt/conda/lib/python*/site-packages",
    "/opt/conda/envs/*/lib/python*/site-packages",
    "/opt/*/lib/python*/site-packages",
    "/opt/*/.venv/lib/python*/site-packages",
    "/opt/*/*/lib/python*/site-packages",
    "/venv/lib/python*/site-packages",
    "/.venv/lib/python*/site-packages",
    "/root/.local/lib/python*/site-packages",
)
CUDART_PATTERNS = (
    "/usr/local/cuda*/lib64/libcudart.so.*",
    "/usr/local/cuda*/targets/*/lib/libcudart.so.*",
    "/usr/lib/x86_64-linux-gnu/libcudart.so.*",
    "/usr/lib/aarch64-linux-gnu/libcudart.so.*",
    "/usr/lib64/libcudart.so.*",
    "/opt/conda/lib/libcudart.so.*",
    "/opt/conda/envs/*/lib/libcudart.so.*",
)
# Libraries that carry a framework's GPU code, first match (with a fatbin) wins.
TF_LIBS = (
    "python/_pywrap_tensorflow_internal.so",
    "libtensorflow_cc.so.2",
    "libtensorflow_framework.so.2",
    "libtensorflow_framework.so.1",
    "libtensorflow_framework.so",
)
TORCH_LIBS = ("lib/libtorch_cuda.so", "lib/libcaffe2_gpu.so", "lib/libtorch.so")


# ---------------------------------------------------------------------------------------------
# ELF and fatbin


def elf_sections(f):
    """{name: (offset, size)} of an ELF file's sections, from its section header table only."""
    f.seek(0)
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64 = ident[4:5] == b"\x02"
    end = "<" if ident[5:6] == b"\x01" else ">"
    if is64:
        hdr = f.read(48)
        shoff = struct.unpack(end + "Q", hdr[24:32])[0]
        shentsize, shnum, shstrndx = struct.unpack(end + "HHH", hdr[42:48])
        fmt = end + "IIQQQQIIQQ"
    else:
        hdr = f.read(36)
        shoff = struct.unpack(end + "I", hdr[16:20])[0]
        shentsize, shnum, shstrndx = struct.unpack(end + "HHH", hdr[30:36])
        fmt = end + "IIIIIIIIII"
    if shoff == 0:
        return {}
    size = struct.calcsize(fmt)
    f.seek(shoff)
    first = struct.unpack(fmt, f.read(size))
    if shnum == 0:  # more than 0xff00 sections: the count is in section 0's sh_size
        shnum = first[5]
    if shstrndx == 0xFFFF:
        shstrndx = first[6]
    if shnum > 100000:
        raise ValueError("implausible section count %d" % shnum)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    heads = [struct.unpack(fmt, table[i * shentsize : i * shentsize + size]) for i in range(shnum)]
    names_off, names_size = heads[shstrndx][4], heads[shstrndx][5]
    f.seek(names_off)
    names = f.read(names_size)
    found = {}
    for h in heads:
        start = h[0]
        stop = names.find(b"\0", start)
        name = names[start:stop].decode("ascii", "replace")
        found[name] = (h[4], h[5])
    return found


def fatbin_archs(f, offset, size):
    """(sass, ptx): sorted sets of SM numbers (e.g. 80 for sm_80) of the cubin (ELF) and PTX
    entries in the fatbin section at ``offset``; only the 16-byte container headers and the
    entry headers are read."""
    sass = set()
    ptx = set()
    end = offset + size
    pos = offset
    count = 0
    while pos + 16 <= end:
        f.seek(pos)
        head = f.read(16)
        magic, _version, head_size, fat_size = struct.unpack("<IHHQ", head)
        if magic != FATBIN_MAGIC:
            # Containers are aligned; skip padding up to the next magic.
            f.seek(pos)
            window = f.read(min(4096, end - pos))
            at = window.find(struct.pack("<I", FATBIN_MAGIC), 1)
            if at < 0:
                break
            pos += at
            continue
        entry = pos + head_size
        stop = min(pos + head_size + fat_size, end)
        while entry + 32 <= stop and count < MAX_ENTRIES:
            f.seek(entry)
            eh = f.read(32)
            kind, _ev, entry_head, payload = struct.unpack("<HHIQ", eh[:16])
            arch = struct.unpack("<I", eh[28:32])[0]
            if entry_head < 32:
                break
            if kind == FATBIN_KIND_ELF:
                sass.add(arch)
            elif kind == FATBIN_KIND_PTX:
                ptx.add(arch)
            count += 1
            entry += entry_head + payload
        pos = max(stop, pos + 16)
    return sorted(sass), sorted(ptx)


def library_archs(path):
    """(sass, ptx) of one shared library, or None when it has no ``.nv_fatbin`` section."""
    with open(path, "rb") as f:
        sections = elf_sections(f)
        if ".nv_fatbin" not in sections:
            return None
        offset, size = sections[".nv_fatbin"]
        return fatbin_archs(f, offset, size)


# ---------------------------------------------------------------------------------------------
# Framework files


def _read(path, limit=1 << 20):
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def _str_value(text, key):
    """The string given to ``key`` in a generated version file, or None (also for ``= None``);
    "" when the key is not there. Reads ``key = 'x'``, ``key: T = 'x'``, ``d['key'] = 'x'``,
    ``'key': 'x'`` and ``('key', 'x')``."""
    value = r"\s*(?:u?['\"]([^'\"]*)['\"]|(None))"
    pats = (
        r"^\s*" + re.escape(key) + r"\s*(?::[^=\n]*)?=" + value,
        r"['\"]" + re.escape(key) + r"['\"]\s*\]?\s*[:,=]" + value,
    )
    for pat in pats:
        m = re.search(pat, text, re.M)
        if m:
            return m.group(1) if m.group(1) is not None else None
    return ""


def parse_tf_build_info(text):
    """{"cuda", "cudnn", "gpu_build", "archs"} from TensorFlow's build_info.py, in each shape
    it has had: ``cuda_version_number = '10.0'`` (1.x), a ``build_info`` dict literal, or
    ``build_info['cuda_version'] = '12.5.1'`` assignments (2.x)."""
    cuda = _str_value(text, "cuda_version")
    if cuda == "":
        cuda = _str_value(text, "cuda_version_number")
    cudnn = _str_value(text, "cudnn_version")
    if cudnn == "":
        cudnn = _str_value(text, "cudnn_version_number")
    m = re.search(r"is_cuda_build['\"]?\s*\]?\s*[:=,]\s*(True|False)", text)
    gpu = None if m is None else m.group(1) == "True"
    archs = []
    m = re.search(r"['\"]cuda_compute_capabilities['\"]\s*\]?\s*[:,=]\s*\[([^\]]*)\]", text)
    if m:
        archs = re.findall(r"['\"]([^'\"]+)['\"]", m.group(1))
    if gpu is None and cuda:
        gpu = True
    return {"cuda": cuda or None, "cudnn": cudnn or None, "gpu_build": gpu, "archs": archs}


def parse_torch_version(text):
    """{"version", "cuda", "hip"} from torch/version.py."""
    return {
        "version": _str_value(text, "__version__") or None,
        "cuda": _str_value(text, "cuda") or None,
        "hip": _str_value(text, "hip") or None,
    }


_DIST = re.compile(r"^([A-Za-z0-9_.]+?)-(\d[^-]*?)(?:-py\d.*)?\.(?:dist|egg)-info$")


def dist_versions(site):
    """{normalized distribution name: version} of the dist-info/egg-info in one site dir."""
    found = {}
    try:
        names = os.listdir(site)
    except OSError:
        return found
    for name in names:
        m = _DIST.match(name)
        if m:
            found[m.group(1).lower().replace("_", "-").replace(".", "-")] = m.group(2)
    return found


def _within(root, path):
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def _rel(root, path):
    return "/" + os.path.relpath(path, root) if root != "/" else path


def _archs_of(root, candidates, errors):
    """(sass, ptx, library) of the first candidate library with a fatbin, else None."""
    for lib in candidates:
        if not os.path.isfile(lib) or not _within(root, lib):
            continue
        try:
            got = library_archs(lib)
        except (OSError, ValueError, struct.error) as e:
            errors.append("%s: %s" % (_rel(root, lib), e))
            continue
        if got is not None:
            return got[0], got[1], _rel(root, lib)
    return None


def _framework(name, version, location, **facts):
    entry = {
        "name": name,
        "version": version,
        "location": location,
        "cuda": None,
        "cudnn": None,
        "gpu_build": None,
        "declared_archs": [],
        "sass": [],
        "ptx": [],
        "archs_from": None,
        "facts_from": None,
    }
    entry.update(facts)
    return entry


def _set_archs(entry, got):
    if got is not None:
        entry["sass"], entry["ptx"], entry["archs_from"] = got[0], got[1], got[2]


def _cuda_from_name(dist):
    """``cupy-cuda12x`` -> "12"; ``cupy-cuda102`` -> "10.2"; ``cupy-cuda92`` -> "9.2"."""
    m = re.search(r"cuda(\d+)(x?)", dist)
    if not m:
        return None
    digits = m.group(1)
    if m.group(2) or len(digits) < 2:
        return digits
    return digits[:-1] + "." + digits[-1]


def scan_site(root, site, errors):
    """The frameworks installed in one site-packages directory."""
    found = []
    dists = dist_versions(site)
    rel = _rel(root, site)
    torch = os.path.join(site, "torch")
    if os.path.isfile(os.path.join(torch, "version.py")):
        info = parse_torch_version(_read(os.path.join(torch, "version.py")))
        entry = _framework(
            "PyTorch",
            info["version"] or dists.get("torch"),
            rel + "/torch",
            cuda=info["cuda"],
            gpu_build=bool(info["cuda"]),
            facts_from=rel + "/torch/version.py",
        )
        if info["cuda"]:
            _set_archs(entry, _archs_of(root, [os.path.join(torch, p) for p in TORCH_LIBS], errors))
        found.append(entry)
    tf = os.path.join(site, "tensorflow")
    build_info = os.path.join(tf, "python", "platform", "build_info.py")
    if os.path.isdir(tf) and os.path.isfile(build_info):
        info = parse_tf_build_info(_read(build_info))
        version = None
        for dist in ("tensorflow", "tensorflow-gpu", "tensorflow-cpu", "tf-nightly"):
            version = version or dists.get(dist)
        entry = _framework(
            "TensorFlow",
            version,
            rel + "/tensorflow",
            cuda=info["cuda"],
            cudnn=info["cudnn"],
            gpu_build=info["gpu_build"],
            declared_archs=info["archs"],
            facts_from=rel + "/tensorflow/python/platform/build_info.py",
        )
        if info["gpu_build"]:
            _set_archs(entry, _archs_of(root, [os.path.join(tf, p) for p in TF_LIBS], errors))
        found.append(entry)
    for dist, version in sorted(dists.items()):
        m = re.match(r"^jax-cuda(\d+)-plugin$", dist)
        if m:
            plugin = os.path.join(site, "jax_cuda%s_plugin" % m.group(1))
            entry = _framework(
                "JAX",
                dists.get("jax") or dists.get("jaxlib") or version,
                _rel(root, plugin),
                cuda=m.group(1),
                gpu_build=True,
                facts_from="%s/%s-%s.dist-info" % (rel, dist.replace("-", "_"), version),
            )
            libs = sorted(glob.glob(os.path.join(plugin, "*.so")))
            _set_archs(entry, _union_archs(root, libs, errors))
            found.append(entry)
        elif dist.startswith("cupy-cuda"):
            found.append(
                _framework(
                    "CuPy",
                    version,
                    rel + "/cupy",
                    cuda=_cuda_from_name(dist),
                    gpu_build=True,
                    facts_from="%s/%s-%s.dist-info" % (rel, dist.replace("-", "_"), version),
                )
            )
    return found


def _union_archs(root, libs, errors):
    sass, ptx, used = set(), set(), []
    for lib in libs:
        got = _archs_of(root, [lib], errors)
        if got is not None:
            sass.update(got[0])
            ptx.update(got[1])
            used.append(os.path.basename(lib))
    if not used:
        return None
    where = os.path.dirname(_rel(root, libs[0]))
    return sorted(sass), sorted(ptx), "%s/{%s}" % (where, ",".join(used))


def _glob(root, pattern):
    base = root.rstrip("/") if root != "/" else ""
    return sorted(p for p in glob.glob(base + pattern) if _within(root, p))


def cudart_files(root, sites):
    """Paths (inside the image) of the libcudart.so.* files in the usual places."""
    paths = []
    for pattern in CUDART_PATTERNS:
        paths.extend(_glob(root, pattern))
    for site in sites:
        paths.extend(
            glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so.*"))
        )
        paths.extend(glob.glob(os.path.join(site, "torch", "lib", "libcudart*.so*")))
    return sorted(set(_rel(root, p) for p in paths))


def scan(root="/"):
    """{"frameworks": [...], "cudart": [...], "errors": [...]} for the image rooted at ``root``.

    Each framework: name, version, location, cuda, cudnn, gpu_build (False: CPU-only build),
    declared_archs (TensorFlow's build_info), sass / ptx (SM numbers found in the fatbin of
    ``archs_from``) and facts_from (the file its CUDA version was read from).
    """
    errors = []
    sites = []
    candidates = []
    for pattern in SITE_PATTERNS:
        candidates.extend(_glob(root, pattern))
    if root == "/":
        # Run by the image's Python: its own path (a venv on PATH, PYTHONPATH) counts too.
        candidates.extend(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    for site in candidates:
        if os.path.isdir(site) and os.path.realpath(site) not in [
            os.path.realpath(s) for s in sites
        ]:
            sites.append(site)
    frameworks = []
    for site in sites:
        try:
            frameworks.extend(scan_site(root, site, errors))
        except (OSError, ValueError) as e:
            errors.append("%s: %s" % (_rel(root, site), e))
    return {"frameworks": frameworks, "cudart": cudart_files(root, sites), "errors": errors}


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "/"
    try:
        found = scan(root)
    except Exception as e:  # one JSON line whatever happens: the caller parses it
        found = {"frameworks": [], "cudart": [], "errors": ["scan failed: %r" % (e,)]}
    print(json.dumps(found, sort_keys=True))


if __name__ == "__main__":
    main()
