#!/usr/bin/env python3
"""Writes ec2/src/api/shapes.json: the part of EC2's API model (botocore's
ec2/2016-11-15/service-2.json, Apache-2.0) that the front door's HTTP API speaks.

Only what the wire format needs is kept: for each supported operation its input and
output shape, and for every shape reachable from them its type, its members' target
shapes and their XML (locationName) and query (queryName) names. The server uses it to
read query-protocol requests and to write the XML responses botocore and the aws CLI
parse.

    scripts/gen-ec2-api-shapes.py [PATH-TO-service-2.json[.gz]]

Without an argument the model comes from the botocore installed in
.cache/venv-imds (scripts/setup/imds.sh creates it).
"""
import glob
import gzip
import json
import os
import sys

OPERATIONS = [
    "RunInstances", "DescribeInstances", "StartInstances", "StopInstances",
    "RebootInstances", "TerminateInstances", "GetConsoleOutput",
    "DescribeInstanceStatus", "DescribeInstanceTypes", "DescribeImages",
    "RegisterImage", "DeregisterImage", "CreateImage", "CopyImage",
    "ModifyImageAttribute", "DescribeImageAttribute",
    "ModifyInstanceCreditSpecification", "DescribeInstanceCreditSpecifications",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def xml_namespace(metadata):
    ns = metadata.get("xmlNamespace", "http://ec2.amazonaws.com/doc/2016-11-15/")
    return ns["uri"] if isinstance(ns, dict) else ns


def main():
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        found = glob.glob(os.path.join(
            ROOT, ".cache/venv-imds/lib/python3*/site-packages/botocore/data/ec2/2016-11-15/service-2.json*"))
        if not found:
            sys.exit("no botocore EC2 model: run scripts/setup/imds.sh or pass its path")
        path = found[0]
    model = load(path)
    shapes = model["shapes"]
    keep = {}

    def visit(name):
        if name in keep:
            return
        shape = shapes[name]
        kind = shape["type"]
        out = {"type": kind}
        keep[name] = out
        if kind == "structure":
            members = {}
            for member, spec in shape.get("members", {}).items():
                m = {"shape": spec["shape"]}
                for key in ("locationName", "queryName"):
                    if key in spec:
                        m[key] = spec[key]
                members[member] = m
                visit(spec["shape"])
            out["members"] = members
        elif kind == "list":
            spec = shape["member"]
            out["member"] = {"shape": spec["shape"]}
            if "locationName" in spec:
                out["member"]["locationName"] = spec["locationName"]
            visit(spec["shape"])
        elif kind == "map":
            out["key"] = shape["key"]["shape"]
            out["value"] = shape["value"]["shape"]
            visit(out["key"])
            visit(out["value"])

    operations = {}
    for op in OPERATIONS:
        spec = model["operations"][op]
        entry = {}
        for side in ("input", "output"):
            if side in spec:
                entry[side] = spec[side]["shape"]
                visit(entry[side])
        operations[op] = entry
    doc = {
        "source": "botocore ec2 2016-11-15 service-2.json (Apache-2.0), trimmed by scripts/gen-ec2-api-shapes.py",
        "apiVersion": model["metadata"]["apiVersion"],
        "xmlNamespace": xml_namespace(model["metadata"]),
        "operations": operations,
        "shapes": dict(sorted(keep.items())),
    }
    target = os.path.join(ROOT, "ec2/src/api/shapes.json")
    with open(target, "w") as f:
        json.dump(doc, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(f"{target}: {len(operations)} operations, {len(keep)} shapes, {os.path.getsize(target)} bytes")


if __name__ == "__main__":
    main()
