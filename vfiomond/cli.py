"""Command line: ``vfiomond run``, ``vfiomond check``, ``vfiomond --version``."""

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from vfiomond import __version__, config as configmod
from vfiomond.errors import VfiomondError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfiomond", description="Prometheus exporter for the kernel's VFIO paths (eBPF).")
    p.add_argument("--version", action="version", version="vfiomond " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon: attach probes and serve /metrics")
    run.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default %s)" % configmod.DEFAULT_LISTEN)
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    run.add_argument("--strict", action="store_true", help="exit if any probe cannot be attached")
    run.add_argument("--log-level", choices=configmod.LOG_LEVELS)
    run.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                     help="exporter-toolkit web configuration (YAML): TLS, basic auth, response headers")
    check = sub.add_parser("check", help="show which probes this kernel offers (reads /proc/kallsyms; attaches nothing)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--config", metavar="FILE",
                       help="TOML configuration file whose probes.module_trampolines the methods follow")
    scan = sub.add_parser("scan-log", help="find and attribute kernel splats in a saved kernel log")
    scan.add_argument("file", metavar="FILE", help="dmesg or journalctl -k output; - for standard input")
    scan.add_argument("--json", action="store_true", help="one JSON object per splat")
    scan.add_argument("--kernel", metavar="VERSION", help="kernel version of the log, for splats that do not say")
    doctor = sub.add_parser("doctor", help="report on this host for a person; exit 1 if anything needs attention")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    return p


def _doctor(as_json: bool) -> int:
    from vfiomond import doctor

    checks = doctor.run_checks()
    if as_json:
        print(json.dumps({"checks": [c._asdict() for c in checks], "root": os.geteuid() == 0}, indent=2))
    else:
        marks = {doctor.OK: "ok", doctor.ATTENTION: "!!", doctor.UNKNOWN: "??"}
        for c in checks:
            print("[%s] %-22s %s" % (marks[c.status], c.name, c.detail))
        if os.geteuid() != 0:
            print("(not root: some checks could not see everything)")
    return doctor.exit_status(checks)


def _scan_log(path: str, as_json: bool, kernel: Optional[str]) -> int:
    from vfiomond import advisories, splats

    issues = advisories.load()
    running = advisories.parse_version(kernel) if kernel else None
    try:
        stream = sys.stdin if path == "-" else open(path, errors="replace")
    except OSError as e:
        raise VfiomondError("cannot read %s: %s" % (path, e.strerror)) from None
    with stream:
        found = list(splats.scan(stream))
    for s in found:
        issue = splats.match(s, issues, running)
        record = {
            "kind": s.kind, "site": s.site, "function": s.function, "vfio": s.vfio, "pfnmap": s.pfnmap,
            "known_issue": issue, "kernel": ".".join(map(str, s.kernel)) if s.kernel else None,
            "header": s.header, "frames": list(s.frames),
        }
        if s.kind == "iommu_fault":
            record["device"] = splats.fault_device(s.header)
        if as_json:
            print(json.dumps(record))
        else:
            tags = [t for t, on in (("VFIO", s.vfio), ("pfnmap", s.pfnmap)) if on]
            print("%-11s %-34s %-24s %-10s %s" % (s.kind, s.site or "-", s.function or "-", ",".join(tags) or "-", issue or "-"))
            print("            " + s.header)
    if not as_json:
        dropped = sum(int(splats.SUPPRESSED.match(s.header).group("count")) for s in found if s.kind == "suppressed")
        print("%d splat(s), %d VFIO-related, %d matching a known issue%s" % (
            len(found), sum(s.vfio for s in found), sum(1 for s in found if splats.match(s, issues, running)),
            "; %d line(s) the kernel's rate limits dropped" % dropped if dropped else ""))
    return 0


def _check(as_json: bool, config_path: Optional[str] = None) -> int:
    from vfiomond.daemon import probe_kernel, trampoline_arities
    from vfiomond.probes import attach_method, method_names

    modules = configmod.load(config_path).module_trampolines if config_path else False
    selections, facts, syms = probe_kernel()
    arities, usable, _ = trampoline_arities(selections, syms, modules)
    rows = [
        {
            "probe": s.probe.name,
            "available": s.available,
            "variant": s.variant.label if s.variant else None,
            "symbols": [sym.name for _, sym in s.hooks],
            "methods": [method_names(hook, attach_method(hook, sym, arities, usable, modules)[0])
                        for hook, sym in s.hooks],
            "reason": s.reason,
        }
        for s in selections
    ]
    if as_json:
        print(json.dumps({"facts": sorted(facts), "probes": rows}, indent=2))
    else:
        for r in rows:
            hooks = ", ".join("%s %s" % pair for pair in zip(r["symbols"], r["methods"]))
            what = "%s [%s]" % (r["variant"], hooks) if r["available"] else r["reason"]
            print("%-24s %-4s %s" % (r["probe"], "yes" if r["available"] else "no", what))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if args.command == "check":
            return _check(args.json, args.config)
        if args.command == "doctor":
            return _doctor(args.json)
        if args.command == "scan-log":
            return _scan_log(args.file, args.json, args.kernel)
        overrides = {}
        if args.listen:
            overrides["listen"] = args.listen
        if args.strict:
            overrides["strict"] = True
        if args.log_level:
            overrides["log_level"] = args.log_level
        if args.web_config_file is not None:
            overrides["web_config_file"] = args.web_config_file
        load_config = configmod.loader(args.config, overrides)
        cfg = load_config()
        logging.basicConfig(
            level=cfg.log_level.upper(), format="%(levelname)s %(message)s", stream=sys.stderr
        )
        from vfiomond.daemon import run

        return run(cfg, load_config)
    except VfiomondError as e:
        print("vfiomond: error: %s" % e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
