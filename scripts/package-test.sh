#!/usr/bin/env bash
# The Debian packages in a throw-away Debian root (a chroot): install,
# the documented first steps as the service users, upgrade, remove, purge,
# and `systemd-analyze verify` of the installed units. Prints a listing of
# what each package put where, and `N passed, N failed`.
#
#   scripts/package-test.sh DIST    # DIST: what scripts/package.sh wrote (deb/*_amd64.deb)
#
# Needs root (chroot), mmdebstrap and systemd-analyze; installs them when
# missing. The root (Debian bookworm, minbase + systemd) is cached as a
# tarball under ~/.cache/ferry: the first run downloads it (~2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

DIST=$(realpath "${1:?usage: $0 DIST}")
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/ferry
TARBALL=$CACHE/bookworm-minbase-systemd.tar
WORK=$(mktemp -d /tmp/ferry-debtest.XXXXXX)
ROOT=$WORK/root
passed=0 failed=0

cleanup() {
    if mountpoint -q "$ROOT/proc" 2>/dev/null; then umount "$ROOT/proc"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
pass() { passed=$((passed + 1)); echo "  ok    $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $*"; }
# check "what" command...: passes when the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# In the root, with a clean environment: as root, or as a service user.
run() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOT" "$@"; }
run_as() {
    local user=$1
    shift
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot --userspec="$user:$user" "$ROOT" "$@"
}
stat_of() { run stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing; }
# ii installed, rc removed (configuration left), none purged.
dpkg_status() {
    local s
    s=$(run dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) || s=none
    echo "${s// /}"
}

step "tools"
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

agent1=$(ls "$DIST"/deb/ferry-agent_*_amd64.deb)
collector1=$(ls "$DIST"/deb/ferry-collector_*_amd64.deb)
echo "packages: $(basename "$agent1") $(basename "$collector1")"

step "throw-away Debian root"
if [ ! -s "$TARBALL" ]; then
    mkdir -p "$CACHE"
    started=$SECONDS
    mmdebstrap --quiet --variant=minbase --include=systemd --mode=root --format=tar bookworm "$TARBALL.part"
    mv "$TARBALL.part" "$TARBALL"
    echo "made $TARBALL in $((SECONDS - started)) s"
fi
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$TARBALL"
mount -t proc proc "$ROOT/proc"
echo "Debian $(cat "$ROOT/etc/debian_version") in $ROOT"

# The next revision of each package: the same files, one line added to the
# packaged configuration (so dpkg has a conffile change to weigh against the
# operator's edit), and the version bumped.
next_revision() { # deb out
    local x=$WORK/unpacked
    rm -rf "$x"
    dpkg-deb -R "$1" "$x"
    local version
    version=$(sed -n 's/^Version: //p' "$x/DEBIAN/control")
    sed -i "s/^Version: .*/Version: ${version%-*}-$((${version##*-} + 1))/" "$x/DEBIAN/control"
    local conf
    conf=$(head -n 1 "$x/DEBIAN/conffiles")
    echo "# (next revision)" >>"$x$conf"
    (cd "$x" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | xargs -0 md5sum | sed 's| \./| |') >"$x/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -b "$x" "$2" >/dev/null
}
mkdir -p "$ROOT/tmp/debs"
cp "$agent1" "$ROOT/tmp/debs/agent-1.deb"
cp "$collector1" "$ROOT/tmp/debs/collector-1.deb"
next_revision "$agent1" "$ROOT/tmp/debs/agent-2.deb"
next_revision "$collector1" "$ROOT/tmp/debs/collector-2.deb"

step "install"
run dpkg -i /tmp/debs/agent-1.deb /tmp/debs/collector-1.deb
for pkg in ferry-agent ferry-collector; do
    check "$pkg installed" test "$(dpkg_status $pkg)" = ii
    check "$pkg: system user with no login shell" \
        sh -c "chroot '$ROOT' getent passwd $pkg | grep -q ':/var/lib/$pkg:/usr/sbin/nologin\$'"
    uid=$(run id -u "$pkg")
    check "$pkg: uid $uid is a system uid" test "$uid" -lt 1000
    check "$pkg: /var/lib/$pkg is 750 $pkg:$pkg" test "$(stat_of /var/lib/$pkg)" = "750 $pkg:$pkg"
    check "$pkg: /etc/$pkg is 750 root:$pkg" test "$(stat_of /etc/$pkg)" = "750 root:$pkg"
    check "$pkg: unit installed, not enabled" \
        sh -c "test -f '$ROOT/usr/lib/systemd/system/$pkg.service' && ! test -e '$ROOT/etc/systemd/system/multi-user.target.wants/$pkg.service'"
    check "$pkg --version" sh -c "chroot '$ROOT' $pkg --version | grep -qx '$pkg [0-9.]*'"
done

step "what the packages put where"
for pkg in ferry-agent ferry-collector; do
    echo "$pkg:"
    for path in $(run dpkg -L "$pkg") /var/lib/$pkg; do
        if [ -f "$ROOT$path" ] || [ "$path" = "/var/lib/$pkg" ] || [ "$path" = "/etc/$pkg" ]; then
            printf '  %-52s %s\n' "$path" "$(stat_of "$path")"
        fi
    done
    printf '  %-52s %s\n' "conffiles" "$(tr '\n' ' ' <"$ROOT/var/lib/dpkg/info/$pkg.conffiles")"
done

step "systemd-analyze verify"
for unit in ferry-agent.service ferry-collector.service; do
    out=$(systemd-analyze verify --root="$ROOT" "$unit" 2>&1) && rc=0 || rc=$?
    check "$unit: verify exits 0 and warns of nothing" test "$rc" -eq 0 -a -z "$out"
    [ -z "$out" ] || echo "$out" | sed 's/^/    /'
    systemd-analyze security --offline=true --root="$ROOT" "$unit" 2>/dev/null | grep 'Overall exposure' | sed 's/^/  /'
done

step "first steps, as docs/deploying.md gives them"
out=$(run_as ferry-collector ferry-collector check-config --config /etc/ferry-collector/collector.toml 2>&1) && rc=0 || rc=$?
check "collector check-config fails without a CA (ExecStartPre)" test "$rc" -eq 1
check "... saying so" grep -q 'no certificate authority at /var/lib/ferry-collector' <<<"$out"
run_as ferry-collector ferry-collector init --config /etc/ferry-collector/collector.toml --san collector.test >/dev/null
check "collector init --config writes no second collector.toml" test ! -e "$ROOT/var/lib/ferry-collector/collector.toml"
check "collector check-config accepts it" \
    run_as ferry-collector ferry-collector check-config --config /etc/ferry-collector/collector.toml
run_as ferry-collector ferry-collector enroll gw-01 --config /etc/ferry-collector/collector.toml \
    --out /var/lib/ferry-collector/bundles/gw-01 --address collector.test:7410 --server-name collector.test >/dev/null
out=$(run_as ferry-agent ferry-agent check-config --config /etc/ferry-agent/agent.toml 2>&1) && rc=0 || rc=$?
check "agent check-config fails without its bundle (ExecStartPre)" test "$rc" -eq 1
check "... saying so" grep -q 'ca.crt: not a readable PEM certificate (copy in the bundle' <<<"$out"
bundle=/var/lib/ferry-collector/bundles/gw-01
run install -m 0644 "$bundle/ca.crt" "$bundle/agent.crt" /etc/ferry-agent/
run install -m 0640 -g ferry-agent "$bundle/agent.key" /etc/ferry-agent/
# The bundle's [collector] table replaces the placeholder one.
run sh -c "sed -i '/^\[collector\]/,/^\[agent\]/{/^\[agent\]/!d}' /etc/ferry-agent/agent.toml &&
    { sed -n '/^\[collector\]/,\$p' $bundle/agent.toml; echo; cat /etc/ferry-agent/agent.toml; } >/tmp/agent.toml &&
    cat /tmp/agent.toml >/etc/ferry-agent/agent.toml"
check "agent check-config accepts it, as ferry-agent (the key is readable by its group only)" \
    run_as ferry-agent ferry-agent check-config --config /etc/ferry-agent/agent.toml
check "the key is not readable by others" sh -c "! chroot --userspec=nobody:nogroup '$ROOT' cat /etc/ferry-agent/agent.key 2>/dev/null"
check "systemctl enable ferry-agent" run systemctl enable ferry-agent.service
check "enabled: multi-user.target wants it" test -L "$ROOT/etc/systemd/system/multi-user.target.wants/ferry-agent.service"

step "upgrade: configuration and data kept"
sed -i 's/^budget = "1 GiB"$/budget = "2 GiB"/' "$ROOT/etc/ferry-agent/agent.toml"
echo "a journal" >"$ROOT/var/lib/ferry-agent/journal.redb"
ca_before=$(sha256sum <"$ROOT/var/lib/ferry-collector/ca.crt")
run dpkg --force-confold -i /tmp/debs/agent-2.deb /tmp/debs/collector-2.deb
check "upgraded" test "$(run dpkg-query -W -f='${Version}' ferry-agent)" = "$(dpkg-deb -f "$ROOT/tmp/debs/agent-2.deb" Version)"
check "the operator's agent.toml edit kept" grep -qx 'budget = "2 GiB"' "$ROOT/etc/ferry-agent/agent.toml"
check "the new packaged agent.toml beside it" test -f "$ROOT/etc/ferry-agent/agent.toml.dpkg-dist"
check "the unchanged collector.toml takes the new revision's" grep -qx '# (next revision)' "$ROOT/etc/ferry-collector/collector.toml"
check "journal kept" grep -qx 'a journal' "$ROOT/var/lib/ferry-agent/journal.redb"
check "collector CA kept" test "$(sha256sum <"$ROOT/var/lib/ferry-collector/ca.crt")" = "$ca_before"
check "still enabled" test -L "$ROOT/etc/systemd/system/multi-user.target.wants/ferry-agent.service"
check "agent check-config still accepts it" \
    run_as ferry-agent ferry-agent check-config --config /etc/ferry-agent/agent.toml

step "remove: binaries go, configuration and data stay"
run dpkg -r ferry-agent ferry-collector
check "ferry-agent removed (configuration left)" test "$(dpkg_status ferry-agent)" = rc
check "binary gone" test ! -e "$ROOT/usr/bin/ferry-agent"
check "agent.toml kept" test -f "$ROOT/etc/ferry-agent/agent.toml"
check "journal kept" test -f "$ROOT/var/lib/ferry-agent/journal.redb"

step "purge: configuration goes, data and users stay unless asked"
out=$(run dpkg -P ferry-agent ferry-collector 2>&1)
echo "$out" | grep -E '^ferry-' | sed 's/^/  /' || true
check "purged" test "$(dpkg_status ferry-agent)$(dpkg_status ferry-collector)" = nonenone
check "packaged configuration removed" test ! -e "$ROOT/etc/ferry-agent/agent.toml" -a ! -e "$ROOT/etc/ferry-collector/collector.toml"
check "journal kept" grep -qx 'a journal' "$ROOT/var/lib/ferry-agent/journal.redb"
check "collector data kept" test "$(sha256sum <"$ROOT/var/lib/ferry-collector/ca.crt")" = "$ca_before"
check "enrollment bundle kept" test -f "$ROOT/etc/ferry-agent/agent.key"
check "users kept" run getent passwd ferry-agent ferry-collector
check "unit no longer enabled" test ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/ferry-agent.service"
check "the purge said how to remove the data" grep -q 'FERRY_PURGE_DATA=yes apt-get purge ferry-agent' <<<"$out"

step "reinstall over the kept data, then purge with FERRY_PURGE_DATA=yes"
run dpkg -i /tmp/debs/agent-2.deb /tmp/debs/collector-2.deb
check "reinstalled" test "$(dpkg_status ferry-agent)$(dpkg_status ferry-collector)" = iiii
check "the kept journal untouched" grep -qx 'a journal' "$ROOT/var/lib/ferry-agent/journal.redb"
check "the kept data still the service user's" test "$(stat_of /var/lib/ferry-collector/ca.key)" = "600 ferry-collector:ferry-collector"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin FERRY_PURGE_DATA=yes chroot "$ROOT" dpkg -P ferry-agent ferry-collector
check "purged" test "$(dpkg_status ferry-agent)$(dpkg_status ferry-collector)" = nonenone
check "users and groups removed" sh -c "! chroot '$ROOT' getent passwd ferry-agent && ! chroot '$ROOT' getent group ferry-collector"
left=$(cd "$ROOT" && find . -xdev \( -path ./proc -o -path ./tmp \) -prune -o -name '*ferry*' -print)
check "nothing named ferry left in the root${left:+: $left}" test -z "$left"

echo
echo "package tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
