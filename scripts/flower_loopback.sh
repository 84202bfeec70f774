#!/usr/bin/env bash
# A Flower deployment on this machine, by hand: a SuperLink and N SuperNodes as
# background processes whose ids go to DIR/pids; `stop` ends exactly those.
# (`fldistill flower local` does start + run + stop in one command.)
#
#   scripts/flower_loopback.sh start DIR N [PORT] [CERT_DIR]   # CERT_DIR: TLS (scripts/flower_certs.sh)
#   fldistill flower app --config exp.toml --out runs/x --app-dir DIR/app
#   FLWR_HOME=DIR/flwr-home flwr run DIR/app local --stream
#   scripts/flower_loopback.sh stop DIR
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR N [PORT] [CERT_DIR] | stop DIR" >&2; exit 2; }
if [ "$cmd" = stop ]; then
  [ -f "$dir/pids" ] || { echo "no $dir/pids" >&2; exit 1; }
  while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$dir/pids"
  rm -f "$dir/pids"; echo "stopped"; exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }
n=${3:?number of SuperNodes}; port=${4:-9093}; certs=${5:-}
mkdir -p "$dir/logs" "$dir/flwr-home"
export FLWR_HOME="$dir/flwr-home"
if [ -n "$certs" ]; then
  link_tls=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key")
  node_tls=(--root-certificates "$certs/ca.crt"); conn_tls="root-certificates = \"$(cd "$certs" && pwd)/ca.crt\""
else
  link_tls=(--insecure); node_tls=(--insecure); conn_tls="insecure = true"
fi
flower-superlink "${link_tls[@]}" --port "$port" --disable-runtime-dependency-installation > "$dir/logs/superlink.log" 2>&1 &
echo $! > "$dir/pids"
printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:%s"\n%s\n' "$port" "$conn_tls" > "$FLWR_HOME/config.toml"
sleep 3
for ((i = 0; i < n; i++)); do
  flower-supernode "${node_tls[@]}" --superlink "127.0.0.1:$port" --port $((port + 100 + i)) \
    --node-config "partition-id=$i num-partitions=$n" > "$dir/logs/supernode-$i.log" 2>&1 &
  echo $! >> "$dir/pids"
done
echo "SuperLink on 127.0.0.1:$port and $n SuperNodes; process ids in $dir/pids, logs in $dir/logs"
