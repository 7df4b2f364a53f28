#!/usr/bin/env bash
# Start a Ray worker node on the GPUs this replica claims, and block until Ray stops.
#
# Docker hands every replica of a scaled service the same GPUs: a device request with
# count N exposes host GPUs 0..N-1 to each container. Replicas started with
# `docker compose up --scale ray-worker=N` therefore claim GPUs among themselves. A replica
# holds an flock(1) lock on one file per GPU UUID in a volume that all replicas share. The lock
# lives as long as this process (exec'd into `ray start --block`), so a replica that stops or
# crashes frees its GPUs, and no stale lock is left behind.
#
# Environment:
#   ARCHSWEEP_RAY_HEAD         address of the Ray head, host:port (required)
#   ARCHSWEEP_GPUS_PER_WORKER  GPUs this replica claims: a positive number, or "all" for every
#                              GPU that no other replica has claimed (default 1)
#   ARCHSWEEP_CPUS_PER_WORKER  CPUs this node offers to Ray; empty lets Ray count them
#   ARCHSWEEP_GPU_LOCK_DIR     directory of the lock files (default /var/lib/archsweep/gpu-locks)
set -euo pipefail

head_address="${ARCHSWEEP_RAY_HEAD:?ARCHSWEEP_RAY_HEAD is not set: give the Ray head as host:port}"
gpus_wanted="${ARCHSWEEP_GPUS_PER_WORKER:-1}"
worker_cpus="${ARCHSWEEP_CPUS_PER_WORKER:-}"
lock_dir="${ARCHSWEEP_GPU_LOCK_DIR:-/var/lib/archsweep/gpu-locks}"

log() {
    echo "ray-worker.sh: $*" >&2
}

if [[ "${gpus_wanted}" != "all" && ! "${gpus_wanted}" =~ ^[1-9][0-9]*$ ]]; then
    log "invalid ARCHSWEEP_GPUS_PER_WORKER='${gpus_wanted}': use a positive number or 'all'"
    exit 2
fi
if [[ -n "${worker_cpus}" && ! "${worker_cpus}" =~ ^[0-9]+$ ]]; then
    log "invalid ARCHSWEEP_CPUS_PER_WORKER='${worker_cpus}': use a whole number, or leave it empty"
    exit 2
fi

if ! gpu_list="$(nvidia-smi --query-gpu=uuid --format=csv,noheader)"; then
    log "nvidia-smi failed, so this container sees no GPU. Check that the NVIDIA Container" \
        "Toolkit is installed on the host and that the service reserves GPUs."
    exit 1
fi
mapfile -t visible_gpus < <(printf '%s\n' "${gpu_list}" | tr -d ' ' | grep -v '^$' || true)
if (( ${#visible_gpus[@]} == 0 )); then
    log "nvidia-smi lists no GPU in this container"
    exit 1
fi

mkdir -p "${lock_dir}"
claimed_gpus=()
for gpu_uuid in "${visible_gpus[@]}"; do
    if [[ "${gpus_wanted}" != "all" ]] && (( ${#claimed_gpus[@]} >= gpus_wanted )); then
        break
    fi

    # The descriptor stays open without close-on-exec, so `exec ray` below keeps the lock.
    exec {lock_fd}>"${lock_dir}/${gpu_uuid}.lock"
    if flock --nonblock "${lock_fd}"; then
        claimed_gpus+=("${gpu_uuid}")
    else
        exec {lock_fd}>&-
    fi
done

if [[ "${gpus_wanted}" == "all" ]]; then
    gpus_needed=1
else
    gpus_needed="${gpus_wanted}"
fi
if (( ${#claimed_gpus[@]} < gpus_needed )); then
    log "only ${#claimed_gpus[@]} of the ${#visible_gpus[@]} visible GPUs are free," \
        "but ARCHSWEEP_GPUS_PER_WORKER=${gpus_wanted}: other ray-worker replicas hold the rest." \
        "Scale ray-worker down or lower ARCHSWEEP_GPUS_PER_WORKER."
    exit 1
fi

# Ray reads CUDA_VISIBLE_DEVICES at node start and hands each task a subset of it.
CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${claimed_gpus[*]}")"
export CUDA_VISIBLE_DEVICES
log "claimed ${#claimed_gpus[@]} GPU(s) ${CUDA_VISIBLE_DEVICES}, joining the Ray head at ${head_address}"

ray_arguments=(
    start
    --address="${head_address}"
    --num-gpus="${#claimed_gpus[@]}"
    --disable-usage-stats
    --block
)
if [[ -n "${worker_cpus}" ]]; then
    ray_arguments+=(--num-cpus="${worker_cpus}")
fi
exec ray "${ray_arguments[@]}"
