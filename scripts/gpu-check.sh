#!/usr/bin/env bash
# The real-GPU check (issue 13): run by hand on a machine with an NVIDIA GPU
# and its driver (nvidia-smi works). CI does not run it: it has no GPU.
#
#   bash scripts/gpu-check.sh
#
# It builds the node with the `cuda` feature (llama.cpp's CUDA backend; the
# CUDA toolkit must be installed), starts a standalone node on a free port in
# a scratch HOME, and checks, printing each as it goes:
#   1. NVML detection: `status` lists every GPU nvidia-smi lists, by UUID;
#   2. a workload given one GPU sees only that one (CUDA_VISIBLE_DEVICES);
#   3. an ONNX deployment with gpus: 1 runs on the CUDA provider of the GPU
#      it was assigned (nvidia-smi shows the model server's pid there);
#   4. a GGUF deployment with gpu_layers offloads (the server's pid holds GPU
#      memory).
# ONNX Runtime with CUDA must be findable (pip install onnxruntime-gpu).
# Exits non-zero at the first check that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf '    ok: %s\n' "$*"; }

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
gpus_smi=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | tr -d ' ')
[ -n "$gpus_smi" ] || fail "nvidia-smi lists no GPU"
say "nvidia-smi lists: $(echo "$gpus_smi" | tr '\n' ' ')"

say "cargo build --release --features cuda"
cargo build --release --features cuda
bin=target/release/cyberwave-cloud-node
[ -x target/release/cyberwave-cloud-node-shim ] || fail "no shim beside $bin"

scratch=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export HOME="$scratch/home" CYBERWAVE_GPUS_PER_WORKLOAD=1
mkdir -p "$HOME" "$scratch/repo"
cat >"$scratch/repo/cyberwave.yml" <<'YML'
cyberwave-cloud-node:
  training: 'echo "visible=$CUDA_VISIBLE_DEVICES"; nvidia-smi -L'
  model_roots: ["models"]
YML
mkdir -p "$scratch/repo/models"
cp tests/fixtures/models/add_matmul.onnx tests/fixtures/gguf/tiny-llama.gguf "$scratch/repo/models/"
say "starting a standalone node on 127.0.0.1:$port (log: $scratch/node.log)"
(cd "$scratch/repo" && exec "$OLDPWD/$bin" start --standalone --mqtt-port "$port") >"$scratch/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null || true; wait $node 2>/dev/null || true' EXIT
send() { (cd "$scratch/repo" && "$OLDPWD/$bin" send --mqtt-port "$port" --json "$@"); }
for _ in $(seq 50); do send status >/dev/null 2>&1 && break; sleep 0.2; done
json() { python3 -c "import json,sys; d=[json.loads(l) for l in sys.stdin if l.strip()]; print($1)"; }

say "1. NVML detection"
listed=$(send status | json 'chr(10).join(g.get("uuid") or "" for g in d[-1]["output"]["gpus"])')
for uuid in $gpus_smi; do
    echo "$listed" | grep -qx "$uuid" || fail "status does not list $uuid (it lists: $listed)"
done
ok "status lists every GPU: $(echo "$listed" | tr '\n' ' ')"

say "2. a workload sees only its GPU"
out=$(send training --wait done --follow-logs)
visible=$(echo "$out" | grep -o 'visible=[^"\\]*' | head -1 | cut -d= -f2)
[ -n "$visible" ] || fail "the workload saw no CUDA_VISIBLE_DEVICES: $out"
case "$visible" in *,*) fail "the workload saw more than one GPU: $visible" ;; esac
echo "$gpus_smi" | grep -qx "$visible" || fail "the workload's GPU $visible is not one nvidia-smi lists"
ok "the workload saw CUDA_VISIBLE_DEVICES=$visible"

deploy_on_gpu() { # <id> <model> <options json>
    send deploy --params "{\"deployment_id\": \"$1\", \"model\": \"$2\", \"gpus\": 1, \"options\": $3}" >/dev/null
    for _ in $(seq 150); do
        state=$(send deployments | json "[r['state'] for r in d[-1]['output']['deployments'] if r['deployment_id']=='$1'][0]")
        [ "$state" = ready ] && return 0
        [ "$state" = failed ] && fail "deployment $1 failed; see $scratch/node.log"
        sleep 0.2
    done
    fail "deployment $1 did not become ready"
}
server_on_gpu() { # <deployment id>: the pid nvidia-smi must show
    pid=$(send deployments | json "[r['pid'] for r in d[-1]['output']['deployments'] if r['deployment_id']=='$1'][0]")
    nvidia-smi --query-compute-apps=pid,gpu_uuid --format=csv,noheader | tr -d ' ' | grep "^$pid," \
        || fail "nvidia-smi shows no GPU memory for the model server of $1 (pid $pid)"
}

say "3. ONNX on the CUDA provider of its GPU"
deploy_on_gpu onnx-gpu add_matmul.onnx '{"execution_provider": "cuda"}'
send infer --params '{"deployment_id": "onnx-gpu", "inputs": {"x": {"dtype": "float32", "shape": [1, 4], "data": [1, 2, 3, 4]}}}' \
    | json 'd[-1]["status"]' | grep -qx ok || fail "infer on onnx-gpu failed"
ok "onnx-gpu answers, on $(server_on_gpu onnx-gpu)"

say "4. GGUF offload"
deploy_on_gpu gguf-gpu tiny-llama.gguf '{"gpu_layers": 99}'
ok "gguf-gpu loaded, on $(server_on_gpu gguf-gpu)"

say "all GPU checks passed"
