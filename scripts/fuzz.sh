#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer, on stable: no
# sanitizer) for SECONDS each (default 60), one at a time, from the
# committed corpus in fuzz/corpus/TARGET. Fails naming the target and the
# crashing input, which is kept outside the tree. New inputs go to a
# scratch directory and are dropped, unless --merge is given: then those
# that add coverage are merged into fuzz/corpus/TARGET (for a developer to
# commit). Targets may be named to run only those.
#   scripts/fuzz.sh [--merge] [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

merge=0
if [ "${1:-}" = "--merge" ]; then
    merge=1
    shift
fi
seconds=${1:-60}
shift || true
case $seconds in
    '' | *[!0-9]*)
        echo "fuzz.sh: SECONDS must be a number, not \"$seconds\"" >&2
        exit 2
        ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo fuzz is not installed (scripts/setup.sh installs it)" >&2
    exit 1
fi

# The lock file is committed: refuse to build anything it does not pin.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
target_dir=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
cargo fuzz build --fuzz-dir fuzz --target-dir "$target_dir" --sanitizer none
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

scratch=$(mktemp -d /tmp/nsbypass-fuzz.XXXXXX)
failed=()
for target in "${targets[@]}"; do
    work=$scratch/$target
    mkdir -p "$work/new" "$work/artifacts" "fuzz/corpus/$target"
    # New inputs go to the first directory; the committed corpus is only read.
    status=0
    "$bin_dir/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
        "$work/new" "fuzz/corpus/$target" >"$work/log" 2>&1 || status=$?
    crash=$(find "$work/artifacts" -type f | head -n 1)
    if [ "$status" -ne 0 ] || [ -n "$crash" ]; then
        failed+=("$target")
        tail -n 40 "$work/log" >&2
        echo "fuzz.sh: $target failed (exit $status) on ${crash:-an input it did not save}; log $work/log" >&2
        echo "fuzz.sh: reproduce with $bin_dir/$target ${crash:-}" >&2
        continue
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/log" | tail -n 1 || true)
    echo "fuzz.sh: $target: $runs runs in ${seconds}s; ${done_line#*DONE   }"
    if [ "$merge" -eq 1 ]; then
        "$bin_dir/$target" -merge=1 -artifact_prefix="$work/artifacts/" \
            "fuzz/corpus/$target" "$work/new" >"$work/merge.log" 2>&1
        echo "fuzz.sh: $target: $(grep -c . <(ls "fuzz/corpus/$target")) inputs in fuzz/corpus/$target"
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs kept in $scratch)" >&2
    exit 1
fi
rm -rf "$scratch"
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds}s each without a crash"
