"""Command line: ``vfiomond run``, ``vfiomond check``, ``vfiomond --version``."""

import argparse
import json
import logging
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
    check = sub.add_parser("check", help="show which probes this kernel offers (reads /proc/kallsyms; attaches nothing)")
    check.add_argument("--json", action="store_true", help="print JSON")
    return p


def _check(as_json: bool) -> int:
    from vfiomond.daemon import probe_kernel

    selections, facts = probe_kernel()
    rows = [
        {
            "probe": s.probe.name,
            "available": s.available,
            "variant": s.variant.label if s.variant else None,
            "symbols": [sym.name for _, sym in s.hooks],
            "reason": s.reason,
        }
        for s in selections
    ]
    if as_json:
        print(json.dumps({"facts": sorted(facts), "probes": rows}, indent=2))
    else:
        for r in rows:
            what = "%s [%s]" % (r["variant"], ", ".join(r["symbols"])) if r["available"] else r["reason"]
            print("%-18s %-4s %s" % (r["probe"], "yes" if r["available"] else "no", what))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if args.command == "check":
            return _check(args.json)
        cfg = configmod.load(args.config)
        overrides = {}
        if args.listen:
            overrides["listen"] = args.listen
        if args.strict:
            overrides["strict"] = True
        if args.log_level:
            overrides["log_level"] = args.log_level
        cfg = configmod.validate(cfg._replace(**overrides), "command line")
        logging.basicConfig(
            level=cfg.log_level.upper(), format="%(levelname)s %(message)s", stream=sys.stderr
        )
        from vfiomond.daemon import run

        return run(cfg)
    except VfiomondError as e:
        print("vfiomond: error: %s" % e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
