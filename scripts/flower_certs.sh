#!/usr/bin/env bash
# Self-signed TLS certificates for a Flower SuperLink, and SuperNode authentication keys.
#
#   scripts/flower_certs.sh DIR [SUPERLINK_HOST ...] [--node-keys N]
#
# DIR/ca.crt           the CA certificate: give it to every SuperNode (--root-certificates)
#                      and to `flwr run` (root-certificates in the connection config)
# DIR/server.pem/.key  the SuperLink's certificate and key (--ssl-certfile/--ssl-keyfile,
#                      with --ssl-ca-certfile DIR/ca.crt); valid for localhost, 127.0.0.1
#                      and every SUPERLINK_HOST given (IP addresses or DNS names)
# DIR/node-I, node-I.pub  with --node-keys N: one ECDSA P-384 key pair per SuperNode
#                      (--auth-supernode-private-key DIR/node-I on the node; register the
#                      .pub with `flwr supernode register DIR/node-I.pub CONNECTION`)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [SUPERLINK_HOST ...] [--node-keys N]" >&2; exit 2; }
dir=$1; shift
nodes=0; hosts=()
while [ $# -gt 0 ]; do
  case $1 in
    --node-keys) nodes=$2; shift 2 ;;
    *) hosts+=("$1"); shift ;;
  esac
done
command -v openssl >/dev/null || { echo "openssl not found" >&2; exit 2; }
mkdir -p "$dir"
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for h in "${hosts[@]+"${hosts[@]}"}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes -subj "/CN=fldistill-flower-ca" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -subj "/CN=flower-superlink" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" "$san" > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 365 -sha256 \
  -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 600 "$dir/ca.key" "$dir/server.key"
for ((i = 0; i < nodes; i++)); do
  rm -f "$dir/node-$i" "$dir/node-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fldistill-node-$i" -f "$dir/node-$i"
done
echo "wrote $dir: ca.crt, server.pem, server.key (SAN $san)${nodes:+, $nodes node key pair(s)}"
