"""``dfer cache verify [--repair] [--cache DIR] [--stage S]``."""

from __future__ import annotations

from pipeline.cli.options import OUT_DIR
from pipeline.core.cache import default_cache_dir
from pipeline.core.errors import EXIT_FAILED_CLIPS, EXIT_OK
from pipeline.engine.cachecheck import verify_cache


def add_parsers(sub) -> None:
    cache = sub.add_parser("cache", help="cache tools")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    verify = cache_sub.add_parser(
        "verify", help="check every artifact of a cache (file hashes, decoding); exit 1 when one is damaged",
        description="Check every artifact of the cache: each file against the size and sha256 recorded when it was "
                    "written, and that it decodes (JSON, .npz, JPEG face crops). Prints a summary and each damaged "
                    "artifact (stage, key, clip, file, problem); exit code 1 when damage was found, 0 otherwise.")
    verify.add_argument("--cache", "--cache-dir", metavar="DIR", action=OUT_DIR, help="cache directory (default: $DFER_CACHE or ~/.cache/dfer)")
    verify.add_argument("--stage", metavar="S", help="check the artifacts of this stage only")
    verify.add_argument("--repair", action="store_true",
                        help="move damaged artifacts aside (to CACHE/damaged/), so the next dfer run recomputes them")
    verify.set_defaults(handler=_verify)


def _verify(args) -> int:
    report = verify_cache(args.cache if args.cache is not None else default_cache_dir(), args.stage, args.repair)
    print("\n".join(report.lines()))
    return EXIT_FAILED_CLIPS if report.damaged else EXIT_OK
