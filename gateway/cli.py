"""The `fieldgate` command: argument parsing only; each verb lives in the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# verb -> "module:function"; the function takes the parsed args and returns the exit code.
VERBS = {
    "validate": "gateway.config:main_validate",
    "schema": "gateway.schema:main_schema",
    "plan": "gateway.requests:main_plan",
    "render": "gateway.compose:main_render",
    "up": "gateway.supervisor:main_up",
    "status": "gateway.supervisor:main_status",
    "update": "gateway.update:main_update",
    "simulate": "gateway.simulate:main_simulate",
    "opcua": "collectors.opcua.browse:main_browse",
    "demo": "gateway.demo:main_demo",
    "images": "gateway.images:main_images",
    "keys": "gateway.signing:main_keys",
    "install": "gateway.install:main_install",
    "fleet": "gateway.fleet:main_fleet",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldgate", description="Modbus and OPC UA devices to MQTT (JSON or Sparkplug B)."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("validate", help="check a config directory; exit 1 with every error listed")
    p.add_argument("dir", type=Path)

    p = verbs.add_parser("schema", help="print the JSON Schema of gateway.yaml and device files")
    p.add_argument("--write", type=Path, default=None, metavar="DIR",
                   help="also write gateway.schema.json and device.schema.json into DIR, for editors")
    p.add_argument("--markdown", action="store_true", help="print the config reference (docs/config.md) instead")

    p = verbs.add_parser("plan", help="show the exact requests each collector will make")
    p.add_argument("dir", type=Path)

    p = verbs.add_parser("render", help="write the compose project (docker-compose.yml and configs)")
    p.add_argument("dir", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--acl", type=Path, default=None, metavar="FILE",
                   help="also write a Mosquitto ACL file for this gateway's topics (docs/security.md)")
    p.add_argument("--writer", action="append", default=None, metavar="USER",
                   help="with --acl: a broker account that may write tags (default: {gateway.id}-writer)")
    p.add_argument("--reader", action="append", default=None, metavar="USER",
                   help="with --acl: a broker account that may only read (default: {gateway.id}-reader)")

    p = verbs.add_parser("up", help="run the supervisor in the foreground; applies config changes")
    p.add_argument("dir", type=Path)
    p.add_argument("--runtime", choices=["docker", "process"], default=None,
                   help="default: runtime in gateway.yaml")
    p.add_argument("--state", type=Path, default=None,
                   help="where generated files, state and the buffer go (default DIR/.fieldgate)")
    p.add_argument("--trusted-images", action="store_true",
                   help="docker: create containers only from image ids a signed bundle loaded "
                        "(`fieldgate images load --trust`)")

    p = verbs.add_parser("status", help="one row per service: state, health, readings/s, buffered, restarts, memory")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true",
                   help="print the supervisor's status as JSON (memory in bytes, with memory_source: "
                        "pss or rss of a process, engine for a container)")
    p.add_argument("--state", type=Path, default=None, help="as given to `up` (default DIR/.fieldgate)")

    p = verbs.add_parser("update", help="hot update of one collector, health-gated, rolled back on failure")
    p.add_argument("dir", type=Path)
    p.add_argument("collector")
    p.add_argument("--image", required=True)
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds the new container has to turn healthy before the update is rolled back")
    p.add_argument("--keep-images", action="store_true",
                   help="keep every older image of the repository (default: keep the new one and the "
                        "one before it, remove the rest)")

    p = verbs.add_parser("simulate", help="serve the devices described by device files")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--host", default=None,
                   help="listen on this address instead of each file's (e.g. 127.0.0.1, or 0.0.0.0 for all)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every client write and connection")

    p = verbs.add_parser("opcua", help="OPC UA tools")
    opcua = p.add_subparsers(dest="opcua_verb", required=True, metavar="VERB")
    b = opcua.add_parser("browse", help="print tag entries for the variables of a server, ready to paste")
    b.add_argument("endpoint")
    b.add_argument("--depth", type=int, default=5)
    b.add_argument("--node", default="i=85", help="where to start (default: the Objects folder)")
    b.add_argument("--security", default=None,
                   help="POLICY,MODE e.g. Basic256Sha256,SignAndEncrypt (default: None)")
    b.add_argument("--username", default=None)
    b.add_argument("--password-file", type=Path, default=None)

    p = verbs.add_parser("demo", help="simulators, a broker, collectors and a live view; Ctrl-C stops all")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-view", action="store_true", help="print readings as lines instead of the live table")
    p.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                   help="auto: a local mosquitto when installed, else amqtt embedded in the demo")

    p = verbs.add_parser("images", help="build, save and load the collector images")
    images = p.add_subparsers(dest="images_verb", required=True, metavar="VERB")
    b = images.add_parser("build", help="build the images from wheels built on this machine")
    b.add_argument("--base", default=None, help="base image (default python:3.11-slim)")
    b.add_argument("--tag", default=None, help="image tag (default: the package version)")
    b.add_argument("--platform", default=None, metavar="PLATFORMS",
                   help="linux/amd64, linux/arm64 or both comma-separated (default: this machine's); "
                        "each is tagged TAG-ARCH, this machine's own also TAG")
    s = images.add_parser("save", help="write an offline bundle (docker save tar + manifest)")
    s.add_argument("out", type=Path)
    s.add_argument("--tag", default=None, help="the images' tag (default: the package version)")
    s.add_argument("--sign", type=Path, default=None, metavar="KEY",
                   help="sign the manifest with this ed25519 private key (`fieldgate keys generate`)")
    lo = images.add_parser("load", help="load an offline bundle, checking its sha256 (and signature)")
    lo.add_argument("bundle", type=Path)
    lo.add_argument("--trust", type=Path, nargs="+", action="extend", default=None, metavar="PUBKEY",
                    help="load only a bundle signed by one of these public keys, every byte checked "
                         "first; records its image ids as trusted for `fieldgate up --trusted-images`")

    p = verbs.add_parser("keys", help="signing keys for offline bundles")
    keys = p.add_subparsers(dest="keys_verb", required=True, metavar="VERB")
    g = keys.add_parser("generate", help="write an ed25519 private key (mode 0600) and OUT.pub beside it")
    g.add_argument("out", type=Path)

    p = verbs.add_parser("install", help="install the systemd unit that runs `fieldgate up DIR` at boot")
    p.add_argument("dir", type=Path)
    p.add_argument("--trusted-images", action="store_true", help="the unit runs `up --trusted-images`")
    p.add_argument("--root", type=Path, default=None,
                   help="write below this directory instead of / (an image being prepared); "
                        "enables without a running systemd")

    p = verbs.add_parser("fleet", help="a plant's gateways from one repository, on Docker Swarm (docs/fleet.md)")
    fleet = p.add_subparsers(dest="fleet_verb", required=True, metavar="VERB")
    for verb, text in (("validate", "check every gateway and model; exit 1 with every error listed"),
                       ("render", "write one Swarm stack file for the whole plant"),
                       ("deploy", "render and deploy the stack on the swarm this engine manages"),
                       ("status", "per gateway, per service: node, replicas, image, health, update state")):
        f = fleet.add_parser(verb, help=text)
        f.add_argument("repo", type=Path)
        if verb in ("render", "deploy"):
            f.add_argument("-o", "--out", type=Path, required=verb == "render", default=None,
                           help="where the stack file goes (deploy: default REPO/.fieldgate/stack)")
        if verb == "deploy":
            f.add_argument("--gateway", action="append", default=None, metavar="ID",
                           help="deploy only this gateway (repeat for a group); default: all, one after another")
            f.add_argument("--timeout", type=float, default=600.0,
                           help="seconds each gateway's rollout may take before the deploy stops")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function_name = VERBS[args.verb].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
