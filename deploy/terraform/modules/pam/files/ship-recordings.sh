#!/bin/bash
# recordings-shipper: uploads finished session recordings from the broker's
# data_dir to the recordings bucket (Object Lock, SSE-KMS by bucket default)
# and removes the local copy once S3 has it. Runs as the broker's uid in a
# sidecar that shares the data volume.
#
# A recording is finished when it has not changed for QUIET_SECONDS, which is
# above the broker's session.idle_timeout: a live session writes at least that
# often or is closed. On SIGTERM (the broker has already stopped: it depends
# on this container, so ECS stops it first) every remaining file is shipped.
#
# Environment: RECORDINGS_DIR, RECORDINGS_BUCKET, RECORDINGS_PREFIX,
# QUIET_SECONDS (default 1200), SCAN_INTERVAL_SECONDS (default 60).
set -uo pipefail

dir=${RECORDINGS_DIR:?}
bucket=${RECORDINGS_BUCKET:?}
prefix=${RECORDINGS_PREFIX:-recordings/}
quiet=${QUIET_SECONDS:-1200}
interval=${SCAN_INTERVAL_SECONDS:-60}
node=${HOSTNAME:-$(hostname)}

log() { printf '{"level":"%s","target":"recordings-shipper","message":"%s"}\n' "$1" "$2"; }

stopping=0
trap 'stopping=1' TERM INT

# ship MIN_AGE_SECONDS: upload and remove every file older than MIN_AGE_SECONDS.
ship() {
  local min_age=$1 failed=0 file key age=()
  [ -d "$dir" ] || return 0
  [ "$min_age" -gt 0 ] && age=(-mmin "+$((min_age / 60))")
  while IFS= read -r -d '' file; do
    key="${prefix}${node}/${file#"$dir"/}"
    # The SHA-256 checksum is stored with the object; it matches the hash the
    # broker writes into the session.end audit event.
    if aws s3 cp "$file" "s3://${bucket}/${key}" --only-show-errors \
         --checksum-algorithm SHA256 --no-progress; then
      rm -f -- "$file"
      log INFO "shipped ${key}"
    else
      failed=$((failed + 1))
      log ERROR "upload of ${file} failed; will retry"
    fi
  done < <(find "$dir" -type f ! -name '.*' "${age[@]}" -print0)
  find "$dir" -mindepth 1 -type d -empty -delete 2>/dev/null
  return "$failed"
}

log INFO "watching ${dir} -> s3://${bucket}/${prefix}${node}/ (quiet ${quiet}s)"
while [ "$stopping" = 0 ]; do
  ship "$quiet"
  sleep "$interval" &
  wait $! 2>/dev/null
done

log INFO "stopping: shipping every remaining recording"
for attempt in 1 2 3; do
  if ship 0; then
    log INFO "all recordings shipped"
    exit 0
  fi
  sleep $((attempt * 5))
done
log ERROR "recordings left unshipped in ${dir}; they are lost with the task"
exit 1
