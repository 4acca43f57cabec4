#!/bin/sh
# `make deb`: dist/chronotick_<version>_<arch>.deb, built with dpkg-deb.
#
# The package carries a self-contained venv under /opt/chronotick made with Debian's own
# /usr/bin/python3 (so it runs on Debian 12 / any host with the same python3 minor), the
# `systemd` extra (python-systemd, compiled here against libsystemd-dev) and no torch. The
# wheels come from PyPI on the build host; the target needs no network. See docs/service.md.
set -eu
cd "$(dirname "$0")/../.."
REPO=$PWD
PYTHON=${DEB_PYTHON:-/usr/bin/python3}
DIST=${DIST:-$REPO/dist}
EXTRAS=${DEB_EXTRAS:-systemd}
VERSION=$($PYTHON -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
PYVER=$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYNEXT=$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
WORK=$(mktemp -d /tmp/chronotick-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
VENV=/opt/chronotick

# A copy of the source tree (tracked and new files, not ignored ones): pip's build leaves
# build/ and *.egg-info behind, and those must not land in the working tree.
mkdir -p "$WORK/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z -co --exclude-standard | xargs -0 sh -c \
    'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
else
  tar --exclude=./.venv --exclude=./dist --exclude=./build -cf - . | tar -xf - -C "$WORK/src"
fi

# The venv, staged under $ROOT; the staging prefix is stripped from every text file after.
$PYTHON -m venv --without-pip "$ROOT$VENV"
$PYTHON -m pip --python "$ROOT$VENV/bin/python" install -q --no-compile \
  --disable-pip-version-check "$WORK/src[$EXTRAS]"
grep -rlIF -- "$ROOT" "$ROOT$VENV" | xargs -r sed -i "s|$ROOT||g"
$PYTHON -m compileall -q -j0 -s "$ROOT" -p / "$ROOT$VENV/lib" >/dev/null
find "$ROOT$VENV" -name RECORD -path '*.dist-info/*' -exec sed -i '/__pycache__/d' {} +

# Entry points, units, sysusers/tmpfiles, udev rule, config (a conffile), docs.
install -d "$ROOT/usr/bin"
for exe in chronotickd chronotick-cli chronotick-mcp; do
  [ -e "$ROOT$VENV/bin/$exe" ] && ln -s "$VENV/bin/$exe" "$ROOT/usr/bin/$exe"
done
install -D -m 644 packaging/systemd/chronotickd.service "$ROOT/lib/systemd/system/chronotickd.service"
install -D -m 644 packaging/systemd/chronotickd.socket "$ROOT/lib/systemd/system/chronotickd.socket"
install -D -m 644 packaging/sysusers.d/chronotick.conf "$ROOT/usr/lib/sysusers.d/chronotick.conf"
install -D -m 644 packaging/tmpfiles.d/chronotick.conf "$ROOT/usr/lib/tmpfiles.d/chronotick.conf"
install -D -m 644 packaging/udev/60-chronotick-ptp.rules "$ROOT/lib/udev/rules.d/60-chronotick-ptp.rules"
install -D -m 644 etc/chronotick.yaml "$ROOT/etc/chronotick/chronotick.yaml"
install -D -m 644 docs/service.md "$ROOT/usr/share/doc/chronotick/service.md"
install -D -m 644 packaging/deb/copyright "$ROOT/usr/share/doc/chronotick/copyright"

# Control files.
install -d -m 755 "$ROOT/DEBIAN"
for s in postinst prerm postrm; do install -m 755 "packaging/deb/$s" "$ROOT/DEBIAN/$s"; done
echo /etc/chronotick/chronotick.yaml > "$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: chronotick
Version: $VERSION
Architecture: $ARCH
Maintainer: ChronoTick developers <chronotick@localhost>
Installed-Size: $SIZE
Depends: python$PYVER, python3 (>= $PYVER~), python3 (<< $PYNEXT), libsystemd0
Recommends: systemd
Suggests: chrony, linuxptp
Section: net
Priority: optional
Homepage: https://github.com/chronotick/chronotick
Description: corrected time with an error bound (NTP, PTP) for programs and AI agents
 chronotickd serves the current time with a guaranteed interval
 (earliest <= true time <= latest), a status and an age over a Unix socket;
 chronotick-cli and chronotick-mcp are its clients. It never sets the clock.
 .
 A private Python virtual environment lives in /opt/chronotick. The optional
 Chronos-Bolt forecaster (torch) is not included: see
 /usr/share/doc/chronotick/service.md.
CONTROL
mkdir -p "$DIST"
OUT="$DIST/chronotick_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz -z6 --build "$ROOT" "$OUT" >/dev/null
echo "$OUT"
