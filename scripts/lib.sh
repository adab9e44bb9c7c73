# Shell helpers shared by scripts/ and loadtest/. Source it from the
# repository root (every caller cd's there first):
#   . scripts/lib.sh

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [TRIES]: until URL answers at all (any status), 0.1 s
# apart, 100 tries unless told; fails with a message after the last.
wait_http() {
    local tries=${2:-100}
    for _ in $(seq "$tries"); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "no answer from $1 after $tries tries" >&2
    return 1
}

# wait_ready URL [TRIES]: like wait_http, but until URL answers 2xx (a
# `readyz` that says 503 while the link table loads is not ready).
wait_ready() {
    local tries=${2:-100}
    for _ in $(seq "$tries"); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "no 2xx answer from $1 after $tries tries" >&2
    return 1
}

# rss_mb PID: the process's resident set in MB, one decimal.
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
