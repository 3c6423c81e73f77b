"""Runs cloud-init's Ec2 datasource (Debian's cloud-init package) against a metadata URL.

Usage: /usr/bin/python3 cloud_init_ec2.py URL aws|unidentified MAC[,MAC...]
(the MACs become eth0, eth1, ... in that order, as the guest's NICs would be named)

Only the SMBIOS read is replaced: `_collect_platform_data` returns what our VMM presents
(system UUID = serial = "ec2..." for "aws", an ordinary UUID otherwise). Everything else,
platform identification, token handling, crawl, network config, is cloud-init's own code.
Prints one JSON object with what the datasource yielded.
"""
import json
import sys
import tempfile
from unittest import mock

from cloudinit import distros, helpers, version
from cloudinit.sources import DataSourceEc2 as ec2_datasource

AWS_UUID = "ec2e1916-9099-7caf-fd21-0123456789ab"
OTHER_UUID = "5d0b5e3c-7a39-4b40-9a2b-0123456789ab"


def platform_data(mode):
    uuid = AWS_UUID if mode == "aws" else OTHER_UUID
    return {
        "uuid": uuid,
        "uuid_source": "dmi",
        "serial": uuid,
        "asset_tag": "",
        "vendor": "",
        "product_name": "",
    }


def main():
    url, mode = sys.argv[1], sys.argv[2]
    nics = {mac: f"eth{index}" for index, mac in enumerate(sys.argv[3].split(","))}
    scratch = tempfile.mkdtemp(prefix="imds-cloud-init-")
    paths = helpers.Paths({"cloud_dir": scratch, "run_dir": scratch})
    sys_cfg = {
        "datasource": {
            "Ec2": {"metadata_urls": [url], "max_wait": 20, "timeout": 5}
        }
    }
    distro = distros.fetch("debian")("debian", {}, paths)
    with mock.patch.object(
        ec2_datasource, "_collect_platform_data", return_value=platform_data(mode)
    ):
        datasource = ec2_datasource.DataSourceEc2(sys_cfg, distro, paths)
        found = datasource.get_data()
        result = {
            "cloud_init_version": version.version_string(),
            "found": found,
            "cloud_name": datasource.cloud_name,
        }
        if found:
            network = ec2_datasource.convert_ec2_metadata_network_config(
                datasource.metadata["network"],
                macs_to_nics=nics,
                fallback_nic="eth0",
            )
            user_data = datasource.userdata_raw
            if isinstance(user_data, bytes):
                user_data = user_data.decode("utf-8", "replace")
            result.update(
                {
                    "instance_id": datasource.get_instance_id(),
                    "user_data": user_data,
                    "region": datasource.region,
                    "availability_zone": datasource.availability_zone,
                    "local_hostname": datasource.get_hostname().hostname,
                    "public_keys": datasource.get_public_ssh_keys(),
                    "identity": datasource.identity,
                    "network_config": network,
                    "api_version": datasource._crawled_metadata.get(
                        "_metadata_api_version"
                    ),
                }
            )
    json.dump(result, sys.stdout, default=str)


if __name__ == "__main__":
    main()
