#!/usr/bin/env bash
# Run a command in the sweep container, joining the Ray cluster first when the command
# passes `--ray-address HOST:PORT`.
#
# A Ray driver that connects with ray.init(address="HOST:PORT") must run on a node of that
# cluster, so this container joins as a node that offers no CPUs and no GPUs. Ray therefore
# schedules every trial on the ray-worker nodes. An address of "auto" or "ray://..." needs no
# local node, and other commands (status, export, report) need no Ray at all.
set -euo pipefail

if (( $# == 0 )); then
    set -- archsweep --help
fi

ray_address=""
previous_argument=""
for argument in "$@"; do
    case "${argument}" in
        --ray-address=*) ray_address="${argument#--ray-address=}" ;;
    esac
    if [[ "${previous_argument}" == "--ray-address" ]]; then
        ray_address="${argument}"
    fi
    previous_argument="${argument}"
done

if [[ -n "${ray_address}" && "${ray_address}" != "auto" && "${ray_address}" != ray://* ]]; then
    echo "ray-join.sh: joining the Ray cluster at ${ray_address} as a node without CPUs or GPUs" >&2
    # `ray start` prints its banner on stdout, which belongs to the command's results.
    ray start --address="${ray_address}" --num-cpus=0 --num-gpus=0 --disable-usage-stats >&2
fi

exec "$@"
