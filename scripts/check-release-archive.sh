#!/usr/bin/env bash
# Builds the Linux release archive here exactly as the release jobs do
# (scripts/package.sh, then SHA256SUMS as the publish job writes it), and
# checks what an operator downloads: the checksums verify, the archive holds
# one directory with exactly the binary, README.md and wsrelay.example.yaml,
# and the unpacked binary runs (`--version` names this crate's version;
# `check-config` accepts the example config beside it).
#
#   scripts/check-release-archive.sh [VERSION]   (default: v + Cargo.toml's version)
#
# A fat-LTO release build for the target: a few minutes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
crate_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
version="${1:-v$crate_version}"
target=x86_64-unknown-linux-gnu
name="wsrelay-$version-$target"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$root/scripts/package.sh" "$target" "$version" "$work/dist" >/dev/null
cd "$work/dist"
cat ./*.sha256 > SHA256SUMS
fail() { echo "check-release-archive: $*" >&2; exit 1; }

[ "$(ls | sort | tr '\n' ' ')" = "SHA256SUMS $name.tar.gz $name.tar.gz.sha256 " ] \
    || fail "unexpected files: $(ls | tr '\n' ' ')"
sha256sum -c --quiet "$name.tar.gz.sha256" || fail "$name.tar.gz.sha256 does not verify"
sha256sum -c --quiet SHA256SUMS || fail "SHA256SUMS does not verify"

listing="$(tar -tzf "$name.tar.gz" | sort | tr '\n' ' ')"
want="$name/ $name/README.md $name/wsrelay $name/wsrelay.example.yaml "
[ "$listing" = "$want" ] || fail "archive holds [$listing], want [$want]"

mkdir "$work/unpacked"
tar -C "$work/unpacked" -xzf "$name.tar.gz"
cd "$work/unpacked/$name"
[ -x wsrelay ] || fail "wsrelay is not executable"
cmp -s README.md "$root/README.md" || fail "README.md differs from the repository's"
cmp -s wsrelay.example.yaml "$root/wsrelay.example.yaml" || fail "wsrelay.example.yaml differs"
printed="$(./wsrelay --version)"
[ "$printed" = "wsrelay $crate_version" ] || fail "--version printed '$printed', want 'wsrelay $crate_version'"
./wsrelay check-config wsrelay.example.yaml >/dev/null || fail "check-config refuses the example config"
if command -v file >/dev/null 2>&1; then
    case "$(file -b wsrelay)" in
        *"not stripped"*) fail "the binary is not stripped" ;;
    esac
fi

echo "check-release-archive: $name.tar.gz ($(stat -c %s "$work/dist/$name.tar.gz") B): layout, checksums, '$printed', example config: ok"
