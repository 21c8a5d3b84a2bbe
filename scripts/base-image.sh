#!/bin/sh
# base-image.sh IMAGE: make sure podman has the Dockerfile's base image.
#
# With a registry at hand, podman pulls debian:bookworm-slim by itself.
# Where none is reachable (CI here reaches only Debian's package
# repositories), this builds the same thing from Debian packages with
# mmdebstrap (a minbase bookworm without documentation, as the slim image
# is) and imports it under the name the Dockerfile uses. Set
# MESHGATE_BASE_FROM=pull to pull it instead.
set -eu
image=${1:?usage: base-image.sh IMAGE}
if podman image exists "$image"; then
	exit 0
fi
if [ "${MESHGATE_BASE_FROM:-mmdebstrap}" = pull ]; then
	exec podman pull "$image"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "base-image: building $image from Debian bookworm with mmdebstrap (about a minute)"
mmdebstrap --quiet --variant=minbase \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	bookworm "$tmp/rootfs.tar" </dev/null
podman import --quiet "$tmp/rootfs.tar" "$image" >/dev/null
echo "base-image: $image ready"
