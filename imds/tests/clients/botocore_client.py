"""Asks botocore/boto3 for credentials and region the way an EC2 guest does.

Run with AWS_EC2_METADATA_SERVICE_ENDPOINT pointing at imdsd; prints one JSON object.
Every other credential and region source is switched off by the caller's environment
(AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE pointing at empty files).
"""
import json
import sys

import boto3
import botocore
import botocore.session
import botocore.utils


def main():
    session = boto3.Session()
    credentials = session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials is not None else None
    result = {
        "botocore_version": botocore.__version__,
        "method": credentials.method if credentials is not None else None,
        "access_key": frozen.access_key if frozen else None,
        "secret_key": frozen.secret_key if frozen else None,
        "token": frozen.token if frozen else None,
        # botocore asks IMDS for the region through IMDSRegionProvider (used by its
        # "auto" defaults mode); a configured region would win, and none is configured.
        "region": session.region_name
        or botocore.utils.IMDSRegionProvider(session._session).provide(),
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
