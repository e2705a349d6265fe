#!/usr/bin/env python3
"""libsrtp (through pylibsrtp) as an independent SRTP peer for the gateway's tests.

Reads one JSON request on stdin and answers one JSON object on stdout:
  {"op": "protect",   "profile": P, "key": hex, "rtp": [hex...], "rtcp": [hex...]}
      -> {"rtp": [hex...], "rtcp": [hex...]}   (libsrtp's SRTP/SRTCP of each packet)
  {"op": "unprotect", "profile": P, "key": hex, "rtp": [hex...], "rtcp": [hex...]}
      -> {"rtp": [hex or null...], "rtcp": [...]} (null: libsrtp refused the packet)
"""
import json
import sys

import pylibsrtp

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def session(request, inbound):
    policy = pylibsrtp.Policy(
        key=bytes.fromhex(request["key"]),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=PROFILES[request["profile"]],
    )
    return pylibsrtp.Session(policy=policy)


def attempt(function, data):
    try:
        return function(data).hex()
    except pylibsrtp.Error:
        return None


def main():
    request = json.load(sys.stdin)
    inbound = request["op"] == "unprotect"
    s = session(request, inbound)
    rtp = s.unprotect if inbound else s.protect
    rtcp = s.unprotect_rtcp if inbound else s.protect_rtcp
    json.dump(
        {
            "rtp": [attempt(rtp, bytes.fromhex(p)) for p in request["rtp"]],
            "rtcp": [attempt(rtcp, bytes.fromhex(p)) for p in request["rtcp"]],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
