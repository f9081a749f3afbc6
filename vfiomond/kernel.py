"""What the running kernel offers: symbols from /proc/kallsyms, and its release.

GCC may rename a static function (``vfio_lock_acct.part.0``, ``.isra.0``,
``.constprop.0``); ``.cold`` parts are never entry points.  Symbols are resolved
by name, never by kernel version, because distributions backport heavily.
"""

import os
import re
from typing import Dict, Iterable, NamedTuple, Optional, Set

KALLSYMS = "/proc/kallsyms"
PROC_MODULES = "/proc/modules"
MODULES_DIR = "/lib/modules"

# <name>.<suffix>.<N>, e.g. vfio_lock_acct.part.0; .cold is never an entry point.
_VARIANT = re.compile(r"^(?P<base>[^.]+)\.(?:part|isra|constprop|lto_priv)\.\d+(?:\.(?:part|isra|constprop)\.\d+)*$")


class Symbol(NamedTuple):
    name: str  # as in kallsyms, e.g. "vfio_lock_acct.part.0"
    address: int  # 0 when kptr_restrict hides addresses
    kind: str  # nm type letter: t/T text, d/D/r/R/b/B data
    module: str  # "" for vmlinux


class Kallsyms:
    """The subset of /proc/kallsyms whose base names were asked for."""

    def __init__(self, symbols: Dict[str, Symbol], lines: int = 0):
        self._symbols = symbols
        self.lines = lines  # lines read: 0 when the file was hidden (systemd's ProtectKernelTunables=)

    @classmethod
    def parse(cls, lines: Iterable[str], wanted: Set[str], skip_modules: Iterable[str] = ()) -> "Kallsyms":
        """Keep the lines whose name, or base name before a GCC suffix, is in ``wanted``,
        except those of ``skip_modules``.

        Lines look like ``ffffffffc0a01230 t vfio_pci_mmap_fault\\t[vfio_pci_core]``.
        Memory stays proportional to ``wanted``, not to the ~200k kernel symbols.
        """
        skip = set(skip_modules)
        found: Dict[str, Symbol] = {}
        count = 0
        for line in lines:
            count += 1
            parts = line.split()
            if len(parts) < 3:
                continue
            name = parts[2]
            base = name.split(".", 1)[0]
            if base not in wanted:
                continue
            if name != base and not _VARIANT.match(name):
                continue  # .cold and other non-entry parts
            module = parts[3].strip("[]") if len(parts) > 3 else ""
            if module in skip:
                continue
            try:
                address = int(parts[0], 16)
            except ValueError:
                continue
            found.setdefault(name, Symbol(name, address, parts[1], module))
        return cls(found, count)

    @classmethod
    def read(cls, wanted: Set[str], path: str = KALLSYMS) -> "Kallsyms":
        """Read ``path``, leaving out modules being unloaded (their symbols go
        last); raises OSError when it cannot be read."""
        with open(path, encoding="ascii", errors="replace") as f:
            return cls.parse(f, wanted, unloading_modules())

    def function(self, name: str, allow_variants: bool) -> Optional[Symbol]:
        """The text symbol to attach to for ``name``: the exact one, else (when
        ``allow_variants``) a GCC-renamed ``.part/.isra/.constprop`` copy."""
        exact = self._symbols.get(name)
        if exact is not None and exact.kind in "tT":
            return exact
        if not allow_variants:
            return None
        variants = sorted(
            s for s in self._symbols.values() if s.kind in "tT" and s.name.split(".", 1)[0] == name and s.name != name
        )
        return variants[0] if variants else None

    def has(self, name: str) -> bool:
        return name in self._symbols

    def address(self, name: str) -> int:
        """Address of a symbol (0 if absent or hidden by kptr_restrict)."""
        sym = self._symbols.get(name)
        return sym.address if sym else 0


def unloading_modules(path: str = PROC_MODULES) -> Set[str]:
    """Modules in state "Unloading" in /proc/modules (name size refs deps state address)."""
    try:
        with open(path, errors="replace") as f:  # as kallsyms: a UnicodeDecodeError is no OSError
            return {p[0] for p in (line.split() for line in f) if len(p) > 4 and p[4] == "Unloading"}
    except OSError:
        return set()


def installable_modules(release_name: str, root: str = MODULES_DIR) -> Optional[Set[str]]:
    """Names of the modules this kernel can load or has built in, from depmod's
    files in ``<root>/<release>``: modules.dep (``kernel/drivers/iommu/iommufd/
    iommufd.ko.xz: <deps>``) and modules.builtin (``kernel/.../name.ko``), "-" read
    as "_" as the kernel names modules.  None when neither file can be read (no
    /lib/modules, as in some containers): then no module is known to be absent."""
    names: Set[str] = set()
    read = False
    for listing in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(root, release_name, listing), errors="replace") as f:
                for line in f:
                    base = os.path.basename(line.split(":", 1)[0].strip())
                    if ".ko" in base:
                        names.add(base.split(".ko", 1)[0].replace("-", "_"))
            read = True
        except OSError:
            continue
    return names if read else None


def release() -> str:
    """The running kernel's release string, as ``uname -r`` prints it."""
    return os.uname().release
