#!/bin/sh
# Install vfiomond on this host (root, Debian or Ubuntu for the packages):
#   - the distribution packages it runs on (BCC's Python bindings, kernel headers, ...)
#   - the Python package into the system Python's site directory, and /usr/local/bin/vfiomond
#   - the systemd unit (/usr/local/lib/systemd/system), the journal catalog
#     (/usr/local/lib/systemd/catalog) and the default configuration
#     (/etc/vfiomond/vfiomond.toml; an existing one is kept)
# Then: systemctl enable --now vfiomond.  DESTDIR=DIR stages the files only.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-/usr/bin/python3}
dest=${DESTDIR:-}

if [ -z "$dest" ]; then
    # python3-yaml, python3-bcrypt: read only for a web configuration (--web.config.file).
    packages="python3 python3-bpfcc python3-prometheus-client python3-pyudev python3-systemd python3-yaml python3-bcrypt linux-headers-$(uname -r)"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        # Debian 11 has no python3-tomli; vfiomond reads TOML with python3-toml there.
        if apt-cache show python3-tomli >/dev/null 2>&1; then packages="$packages python3-tomli"; else packages="$packages python3-toml"; fi
    fi
    missing=""
    for p in $packages; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "install: installing$missing" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends $missing
    fi
fi

site=$("$python" -c 'import site; print(site.getsitepackages()[0])')
pkg="$dest$site/vfiomond"
rm -rf "$pkg"
install -d "$pkg/bpf"
install -m 644 "$src"/vfiomond/*.py "$src"/vfiomond/known_issues.json "$pkg/"
install -m 644 "$src"/bpf/*.c "$src"/bpf/*.h "$pkg/bpf/"
"$python" -m compileall -q "$pkg" >/dev/null
install -d "$dest/usr/local/bin"
printf '#!%s\nimport sys\nfrom vfiomond.cli import main\nsys.exit(main())\n' "$python" >"$dest/usr/local/bin/vfiomond"
chmod 755 "$dest/usr/local/bin/vfiomond"
install -d "$dest/usr/local/lib/systemd/system"
sed 's#^ExecStart=/usr/bin/vfiomond #ExecStart=/usr/local/bin/vfiomond #' "$src/systemd/vfiomond.service" \
    >"$dest/usr/local/lib/systemd/system/vfiomond.service"
chmod 644 "$dest/usr/local/lib/systemd/system/vfiomond.service"
install -D -m 644 "$src/systemd/vfiomond.catalog" "$dest/usr/local/lib/systemd/catalog/vfiomond.catalog"
if [ ! -e "$dest/etc/vfiomond/vfiomond.toml" ]; then
    install -D -m 644 "$src/systemd/vfiomond.toml" "$dest/etc/vfiomond/vfiomond.toml"
fi
echo "install: vfiomond in $pkg, /usr/local/bin/vfiomond, unit vfiomond.service" >&2

if [ -z "$dest" ]; then
    journalctl --update-catalog 2>/dev/null || true
    [ -d /run/systemd/system ] && systemctl daemon-reload
fi
exit 0
