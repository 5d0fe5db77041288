#!/usr/bin/env bash
# Entrypoint of the Ascend target image: `entrypoint.sh COMMAND...`.
#
# The CANN base image's own entrypoint sources the toolkit, ascendnpu-ir and nnal/atb set_env.sh
# scripts; replacing it (as our image must, to run inv) loses them, and with them bishengir-compile,
# which triton-ascend kernels need. So this sources the same scripts, then sets our determinism
# switches again, since nnal/atb/set_env.sh turns them off (LCCL_DETERMINISTIC=0,
# ATB_MATMUL_SHUFFLE_K_ENABLE=1). With LLM_PARITY_OWNER=uid:gid, what the command wrote under the
# results and models folders is handed to that user when it ends: the container runs as root.
# No `set -u`: the vendor scripts read variables that may be unset.

ascend_root=${LLM_PARITY_ASCEND_ROOT:-/usr/local/Ascend}
env_scripts=(
  "$ascend_root/ascend-toolkit/set_env.sh"
  "$ascend_root"/cann-*/share/info/ascendnpu-ir/bin/set_env.sh
  "$ascend_root/nnal/atb/set_env.sh"
)
for script in "${env_scripts[@]}"; do
  if [ -f "$script" ]; then
    # shellcheck disable=SC1090
    source "$script"
  fi
done

# Determinism switches from vllm-ascend's docs; provenance.json records them with the rest.
export LCCL_DETERMINISTIC=1 HCCL_DETERMINISTIC=true ATB_MATMUL_SHUFFLE_K_ENABLE=0 ATB_LLM_LCOC_ENABLE=0

if [ -z "${LLM_PARITY_OWNER:-}" ] || [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
wait "$child"
status=$?
while kill -0 "$child" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the real end
  wait "$child"
  status=$?
done
for folder in "${LLM_PARITY_RESULTS:-results}" "${LLM_PARITY_MODELS:-models}"; do
  if [ -d "$folder" ]; then
    chown -R "$LLM_PARITY_OWNER" "$folder"
  fi
done
exit "$status"
