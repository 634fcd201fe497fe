"""Key material and tokens from an independent JWT implementation (PyJWT).

The Rust tests use this to prove that exai accepts tokens it did not sign
itself. Reads one JSON request on stdin:

    {"keys": [{"kid": "k1", "alg": "ES256"}, ...],
     "tokens": [{"kid": "k1", "claims": {...}, "headers": {...}}, ...]}

and writes one JSON answer on stdout:

    {"keys": {"k1": {"alg": "ES256", "jwk": {...public JWK...},
                     "private_pem": "-----BEGIN PRIVATE KEY-----..."}},
     "tokens": ["eyJ...", ...]}

Keys are generated fresh on every run; nothing here is a real secret.
"""

import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def generate(alg):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1()), ECAlgorithm
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm
    raise SystemExit(f"unsupported alg {alg}")


def main():
    request = json.load(sys.stdin)
    keys, answer = {}, {"keys": {}, "tokens": []}
    for spec in request.get("keys", []):
        private, family = generate(spec["alg"])
        jwk = json.loads(family.to_jwk(private.public_key()))
        jwk.update({"kid": spec["kid"], "alg": spec["alg"], "use": "sig"})
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        keys[spec["kid"]] = (private, spec["alg"])
        answer["keys"][spec["kid"]] = {"alg": spec["alg"], "jwk": jwk, "private_pem": pem}
    for spec in request.get("tokens", []):
        private, alg = keys[spec["kid"]]
        headers = {"kid": spec["kid"], **spec.get("headers", {})}
        answer["tokens"].append(jwt.encode(spec["claims"], private, algorithm=alg, headers=headers))
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
